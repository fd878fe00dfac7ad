"""Processed-dataset cache: ``<cache_dir>/datasets/<name>-<key>/``.

``key`` = first 16 hex digits of sha256 over a JSON payload of: the cache format version, the loader class
and its options, the identity of every source file (name, size, sha256 of the content, so a touched or
moved copy still hits) and the protocol (class and fields). Contents, all pickle-free:

- ``splits.npz``: ``user_ids`` (unicode), per split ``<split>_indptr`` / ``<split>_indices`` and, when the
  source has timestamps, ``<split>_timestamps`` (values are all 1 and not stored); when the dataset has
  sequential samples, per split ``<split>_samples_{user,history,target,timestamp}``; when a protocol
  sub-sampled the train samples, ``training_period_counts`` (items' counts before sub-sampling);
- ``items.parquet``: the item table;
- ``meta.json``: written last; counts, shapes, each file's size and sha256, and the provenance ``info``.

Every file is written to a temporary file in the same folder and moved into place with ``os.replace``.
:func:`load_processed` checks meta.json against the files (size, sha256, shapes, counts, index ranges) and
returns None when anything is missing or wrong, so that the caller rebuilds.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from fairbench.data.types import SPLITS, InteractionData, SequentialSamples
from fairbench.files import atomic_write

log = logging.getLogger(__name__)

FORMAT_VERSION = 3  # bump when the processing code changes its output for the same inputs
SPLITS_FILE, ITEMS_FILE, META_FILE = "splits.npz", "items.parquet", "meta.json"


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_identity(path: Path) -> dict[str, Any]:
    """Content identity of a source file: name, size, sha256 (not its folder or mtime)."""
    path = Path(path)
    return {"name": path.name, "size": path.stat().st_size, "sha256": sha256_file(path)}


def cache_key(payload: dict[str, Any]) -> str:
    """16 hex digits of sha256 over the canonical JSON of ``payload``."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_processed(data: InteractionData, directory: Path, key_payload: dict[str, Any]) -> None:
    """Write ``data`` to ``directory`` (see module docstring); meta.json last."""
    arrays: dict[str, np.ndarray] = {"user_ids": np.asarray(data.user_ids, dtype=str)}
    has_time = data.train_timestamps is not None
    for split in SPLITS:
        matrix = data.split(split)
        arrays[f"{split}_indptr"] = matrix.indptr.astype(np.int64)
        arrays[f"{split}_indices"] = matrix.indices.astype(np.int32)
        if has_time:
            arrays[f"{split}_timestamps"] = np.asarray(getattr(data, f"{split}_timestamps"), dtype=np.float64)
    for split, samples in (data.samples or {}).items():
        arrays[f"{split}_samples_user"] = samples.user.astype(np.int64)
        arrays[f"{split}_samples_history"] = samples.history.astype(np.int32)
        arrays[f"{split}_samples_target"] = samples.target.astype(np.int64)
        arrays[f"{split}_samples_timestamp"] = samples.timestamp.astype(np.float64)

    if data.training_period_counts is not None:
        arrays["training_period_counts"] = np.asarray(data.training_period_counts, dtype=np.int64)

    def write_npz(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)

    def write_parquet(tmp: Path) -> None:
        pq.write_table(pa.Table.from_pandas(data.items, preserve_index=False), tmp)

    atomic_write(directory / SPLITS_FILE, write_npz)
    atomic_write(directory / ITEMS_FILE, write_parquet)
    meta = {
        "format_version": FORMAT_VERSION,
        "name": data.name,
        "n_users": data.n_users,
        "n_items": data.n_items,
        "nnz": {split: int(data.split(split).nnz) for split in SPLITS},
        "has_timestamps": has_time,
        "samples": None if data.samples is None else {split: len(v) for split, v in data.samples.items()},
        "files": {name: file_identity(directory / name) for name in (SPLITS_FILE, ITEMS_FILE)},
        "key": key_payload,
        "info": data.info,
    }
    atomic_write(directory / META_FILE, lambda tmp: tmp.write_text(json.dumps(meta, indent=1, default=str)))


def load_processed(directory: Path, name: str) -> InteractionData | None:
    """The dataset cached in ``directory``, or None (with the reason logged) if absent or corrupt."""
    if not (directory / META_FILE).exists():
        return None
    try:
        return _load_checked(directory, name)
    except Exception as err:  # noqa: BLE001 - any failure to read a cache means: rebuild it
        log.warning("processed-data cache %s is unusable (%s); rebuilding", directory, err)
        return None


def _load_checked(directory: Path, name: str) -> InteractionData:
    meta = json.loads((directory / META_FILE).read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"format version {meta.get('format_version')} != {FORMAT_VERSION}")
    for file_name, expected in meta["files"].items():
        actual = file_identity(directory / file_name)
        if actual["size"] != expected["size"] or actual["sha256"] != expected["sha256"]:
            raise ValueError(f"{file_name} does not match meta.json (truncated or modified)")
    n_users, n_items = int(meta["n_users"]), int(meta["n_items"])
    with np.load(directory / SPLITS_FILE, allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    user_ids = arrays["user_ids"]
    if user_ids.shape != (n_users,):
        raise ValueError(f"user_ids has shape {user_ids.shape}, meta.json says {n_users} users")
    matrices: dict[str, sp.csr_matrix] = {}
    stamps: dict[str, np.ndarray | None] = {}
    for split in SPLITS:
        indptr, indices = arrays[f"{split}_indptr"], arrays[f"{split}_indices"]
        nnz = int(meta["nnz"][split])
        if indptr.shape != (n_users + 1,) or indptr[0] != 0 or indptr[-1] != nnz or indices.shape != (nnz,):
            raise ValueError(f"{split} matrix does not match meta.json")
        if np.any(np.diff(indptr) < 0) or (nnz and (indices.min() < 0 or indices.max() >= n_items)):
            raise ValueError(f"{split} matrix has invalid indices")
        matrix = sp.csr_matrix((np.ones(nnz, dtype=np.float32), indices, indptr), shape=(n_users, n_items))
        matrix.has_sorted_indices = True
        matrices[split] = matrix
        stamps[split] = arrays[f"{split}_timestamps"] if meta["has_timestamps"] else None
    samples = _load_samples(arrays, meta.get("samples"), n_users, n_items)
    items = pq.read_table(directory / ITEMS_FILE).to_pandas()
    if len(items) != n_items:
        raise ValueError(f"items.parquet has {len(items)} rows, meta.json says {n_items}")
    if "genres" in items:
        # parquet gives numpy arrays; the contract type is list[str]
        items["genres"] = pd.Series([list(g) for g in items["genres"]], index=items.index, dtype=object)
    return InteractionData(
        name=name,
        user_ids=user_ids,
        items=items,
        train=matrices["train"],
        valid=matrices["valid"],
        test=matrices["test"],
        train_timestamps=stamps["train"],
        valid_timestamps=stamps["valid"],
        test_timestamps=stamps["test"],
        info=meta["info"],
        samples=samples,
        training_period_counts=arrays.get("training_period_counts"),
    )


def _load_samples(
    arrays: dict[str, np.ndarray], sizes: dict[str, int] | None, n_users: int, n_items: int
) -> dict[str, SequentialSamples] | None:
    """The cached samples, checked against meta.json's sizes and the index ranges."""
    if sizes is None:
        return None
    samples = {}
    for split, size in sizes.items():
        user, history = arrays[f"{split}_samples_user"], arrays[f"{split}_samples_history"]
        target, stamp = arrays[f"{split}_samples_target"], arrays[f"{split}_samples_timestamp"]
        if user.shape != (size,) or target.shape != (size,) or stamp.shape != (size,) or history.ndim != 2:
            raise ValueError(f"{split} samples do not match meta.json")
        if size and (
            min(user.min(), target.min()) < 0
            or user.max() >= n_users
            or target.max() >= n_items
            or history.min() < -1
            or history.max() >= n_items
        ):
            raise ValueError(f"{split} samples have invalid indices")
        samples[split] = SequentialSamples(user=user, history=history, target=target, timestamp=stamp)
    return samples
