"""LM item vectors with an on-disk cache: ``<cache_dir>/vectors/<key>.npy`` + ``<key>.json`` sidecar.

key = sha256(encoder fingerprint + rendered item texts), so a change of model, revision, pooling, dtype,
max_length, normalisation, template or item text gives a new entry. The sidecar records fingerprint, n, d,
template and a crc32 of the array bytes; a file that does not match (truncated, corrupt, wrong shape) is
rebuilt, never trusted. Large catalogues are encoded in chunks written as shard files
(``<key>.shards/rows-<start>-<stop>.npy``) so an interrupted run resumes from the finished shards; the
final array is assembled with all writes atomic (temp file + ``os.replace``) and the shards are deleted.
A cache hit never constructs model weights (the encoder loads lazily and is only asked for its fingerprint).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import time
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fairbench.backbones.base import TextEncoder
from fairbench.backbones.templates import DEFAULT_TEMPLATE, render_item_texts
from fairbench.errors import UserError
from fairbench.files import atomic_write, write_text_atomic
from fairbench.runtime import build, resolve_device

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 4096
"""Texts per shard file (resume granularity)."""

BACKBONE_KEYS = {"name", "template", "batch_size", "encoder"}
"""Keys of a backbone config node; ``encoder`` is the ``_target_`` node, the rest are plain keys."""


@dataclass(frozen=True)
class EmbedResult:
    """Where the item vectors are and how they were obtained."""

    path: Path  # <cache_dir>/vectors/<key>.npy
    shape: tuple[int, int]  # (n items, d)
    key: str  # sha256 cache key
    fingerprint: str  # encoder fingerprint
    cache_hit: bool  # True: loaded from a verified cache file, model not loaded
    shards_reused: int  # shards of an interrupted run picked up again (0 on a fresh build or a hit)
    seconds: float  # wall time of the call


@dataclass(frozen=True)
class BackboneSpec:
    """A validated backbone config node (plain keys + the encoder ``_target_`` node)."""

    name: str
    template: str
    batch_size: int
    encoder: Mapping[str, Any]


def backbone_spec(backbone_cfg: Any) -> BackboneSpec:
    """Check a backbone node: known keys only, a ``_target_`` encoder, an integer batch size >= 1."""
    from omegaconf import DictConfig, OmegaConf

    cfg = OmegaConf.create(backbone_cfg) if not isinstance(backbone_cfg, DictConfig) else backbone_cfg
    unknown = sorted(set(cfg.keys()) - BACKBONE_KEYS)
    if unknown:
        raise UserError(f"backbone: unknown key(s) {unknown}; allowed keys are {sorted(BACKBONE_KEYS)}.")
    encoder = cfg.get("encoder")
    if encoder is None or not isinstance(encoder, DictConfig) or "_target_" not in encoder:
        raise UserError("backbone.encoder must be a node with a _target_ (see conf/backbone/minilm.yaml).")
    template = cfg.get("template", DEFAULT_TEMPLATE)
    batch_size = cfg.get("batch_size", 64)
    if not isinstance(template, str):
        raise UserError(f"backbone.template must be a string, got {template!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"backbone.batch_size must be an integer >= 1, got {batch_size!r}.")
    return BackboneSpec(
        name=str(cfg.get("name", "")), template=template, batch_size=batch_size, encoder=encoder
    )


def build_encoder(encoder_cfg: Any, device: str = "cpu") -> TextEncoder:
    """The encoder of ``backbone.encoder`` on ``device``; lazy, so no weights are loaded here."""
    return build(encoder_cfg, TextEncoder, "backbone.encoder", device=resolve_device(device))


def cache_key(fingerprint: str, texts: list[str]) -> str:
    """sha256 over the fingerprint and the exact item texts (JSON-encoded, so boundaries are unambiguous)."""
    return hashlib.sha256(json.dumps([fingerprint, texts], ensure_ascii=False).encode()).hexdigest()


def _crc32(array: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(array).view(np.uint8).reshape(-1)) & 0xFFFFFFFF


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    def save(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, array, allow_pickle=False)

    atomic_write(path, save)


def _atomic_write_json(path: Path, payload: dict) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2))


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Exclusive lock so parallel sweep jobs build an entry once (POSIX flock; no-op where unavailable)."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _load_verified(path: Path, sidecar: Path, fingerprint: str, n: int) -> np.ndarray | None:
    """The cached array if it and its sidecar agree (fingerprint, shape, dtype, crc32); else None."""
    if not (path.is_file() and sidecar.is_file()):
        return None
    try:
        meta = json.loads(sidecar.read_text())
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        log.warning("LM vector cache %s is unreadable (%s); rebuilding.", path, error)
        return None
    ok = (
        isinstance(meta, dict)
        and meta.get("fingerprint") == fingerprint
        and meta.get("n") == n
        and array.dtype == np.float32
        and array.shape == (n, meta.get("d"))
        and meta.get("crc32") == _crc32(array)
    )
    if not ok:
        log.warning("LM vector cache %s does not match its sidecar; rebuilding.", path)
        return None
    return array


def shard_path(shard_dir: Path, start: int, stop: int) -> Path:
    return shard_dir / f"rows-{start:09d}-{stop:09d}.npy"


def _load_shard(path: Path, rows: int, dim: int | None) -> np.ndarray | None:
    """A finished shard if it is readable float32 ``[rows, dim]`` with finite values; else None."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    valid = (
        array.dtype == np.float32
        and array.ndim == 2
        and array.shape[0] == rows
        and (dim is None or array.shape[1] == dim)
        and bool(np.isfinite(array).all())
    )
    return array if valid else None


def encode_shard(
    encoder: TextEncoder,
    texts: list[str],
    start: int,
    stop: int,
    shard_dir: Path,
    batch_size: int,
    show_progress: bool = False,
) -> Path:
    """Encode ``texts[start:stop]`` and write it atomically as one shard file; returns its path."""
    shard_dir.mkdir(parents=True, exist_ok=True)
    path = shard_path(shard_dir, start, stop)
    vectors = encoder.encode(texts[start:stop], batch_size=batch_size, show_progress=show_progress)
    if not np.isfinite(vectors).all():
        raise RuntimeError(
            f"encoder {encoder.fingerprint} produced non-finite vectors for rows {start}:{stop}"
        )
    _atomic_save_npy(path, vectors)
    return path


def _build(
    encoder: TextEncoder,
    texts: list[str],
    shard_dir: Path,
    out_path: Path,
    batch_size: int,
    chunk_size: int,
    show_progress: bool,
) -> tuple[int, int, int]:
    """Encode the missing chunks (valid shards are reused), then assemble ``out_path`` atomically through a
    memory-mapped temp file. Returns (d, crc32 of the array bytes, shards reused)."""
    n = len(texts)
    bounds = [(start, min(start + chunk_size, n)) for start in range(0, n, chunk_size)]
    dim: int | None = None
    reused = 0
    for index, (start, stop) in enumerate(bounds):
        path = shard_path(shard_dir, start, stop)
        shard = _load_shard(path, stop - start, dim) if path.is_file() else None
        if shard is None:
            log.info(
                "Encoding items %d-%d (chunk %d/%d) with %r", start, stop, index + 1, len(bounds), encoder
            )
            encode_shard(encoder, texts, start, stop, shard_dir, batch_size, show_progress)
            shard_dim = encoder.dim
        else:
            reused += 1
            shard_dim = shard.shape[1]
        dim = dim if dim is not None else shard_dim

    crc = 0

    def assemble(tmp: Path) -> None:
        nonlocal crc
        assembled = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
        for start, stop in bounds:
            shard = np.load(shard_path(shard_dir, start, stop), allow_pickle=False)
            assembled[start:stop] = shard
            crc = zlib.crc32(np.ascontiguousarray(shard).view(np.uint8).reshape(-1), crc)
        assembled.flush()
        del assembled

    atomic_write(out_path, assemble)
    return dim, crc & 0xFFFFFFFF, reused


def _embed(
    backbone_cfg: Any,
    items: pd.DataFrame,
    cache_dir: Path,
    device: str,
    show_progress: bool,
    chunk_size: int,
    encoder: TextEncoder | None = None,
) -> tuple[EmbedResult, np.ndarray]:
    began = time.perf_counter()
    spec = backbone_spec(backbone_cfg)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    texts = render_item_texts(items, spec.template)
    if not texts:
        raise UserError("The items table is empty; there is nothing to embed.")
    encoder = encoder if encoder is not None else build_encoder(spec.encoder, device)
    fingerprint = encoder.fingerprint
    key = cache_key(fingerprint, texts)
    vectors_dir = Path(cache_dir).expanduser() / "vectors"
    vectors_dir.mkdir(parents=True, exist_ok=True)
    out_path = vectors_dir / f"{key}.npy"
    sidecar = vectors_dir / f"{key}.json"
    shard_dir = vectors_dir / f"{key}.shards"

    with _file_lock(vectors_dir / f"{key}.lock"):
        array = _load_verified(out_path, sidecar, fingerprint, len(texts))
        cache_hit = array is not None
        reused = 0
        if array is None:
            dim, crc, reused = _build(
                encoder, texts, shard_dir, out_path, spec.batch_size, chunk_size, show_progress
            )
            _atomic_write_json(
                sidecar,
                {
                    "name": spec.name,
                    "fingerprint": fingerprint,
                    "template": spec.template,
                    "n": len(texts),
                    "d": dim,
                    "dtype": "float32",
                    "crc32": crc,
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                },
            )
            shutil.rmtree(shard_dir, ignore_errors=True)
            array = _load_verified(out_path, sidecar, fingerprint, len(texts))
            if array is None:
                raise RuntimeError(
                    f"LM vector cache {out_path} failed verification right after it was written"
                )
    result = EmbedResult(
        path=out_path,
        shape=(int(array.shape[0]), int(array.shape[1])),
        key=key,
        fingerprint=fingerprint,
        cache_hit=cache_hit,
        shards_reused=reused,
        seconds=time.perf_counter() - began,
    )
    log.info(
        "LM item vectors %s %s: %s (%.1fs)",
        result.shape,
        "cache hit" if cache_hit else "built",
        out_path,
        result.seconds,
    )
    return result, array


def embed(
    backbone_cfg: Any,
    items: pd.DataFrame,
    cache_dir: Path,
    device: str = "cpu",
    show_progress: bool = True,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> EmbedResult:
    """Make sure the item vectors for ``backbone_cfg`` are cached; returns where they are and their shape."""
    result, _ = _embed(backbone_cfg, items, cache_dir, device, show_progress, chunk_size)
    return result


def item_vectors(
    backbone_cfg: Any,
    items: pd.DataFrame,
    cache_dir: Path,
    device: str = "cpu",
    show_progress: bool = True,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    encoder: TextEncoder | None = None,
) -> np.ndarray:
    """Item text vectors z_i = f_LM(template(item_i)) as float32 ``[I, d]``, row i = internal item i.

    ``encoder``: an already built encoder of ``backbone_cfg.encoder`` (e.g. the causal LM a model trains,
    so a 7B model is loaded once); by default one is built.
    """
    _, array = _embed(backbone_cfg, items, cache_dir, device, show_progress, chunk_size, encoder)
    return array
