"""The processed exchange format of the BIGRec family (BIGRec, D3, MSL...; METHODS.md 1.2).

Files in one folder:

- ``train.csv``, ``test.csv`` and optionally ``valid.csv``: a header naming at least ``user_id``,
  ``item_ids`` and ``timestamp`` (other columns are ignored); one next-item sample per row, ``item_ids`` a
  Python-literal list of item ids (``"[12, 7, 3]"``, parsed with :func:`ast.literal_eval`, never ``eval``)
  whose last element is the target and the others the history, oldest first; ``timestamp`` a number;
- item titles: ``id2name*.json`` (``{"12": "Title", ...}``; exactly one such file) or, when there is
  none, ``id2name.txt`` (``title<TAB>id`` lines; the id is after the last tab).

Items have no genres (set ``dataset.groups.genre=null``). The samples keep their split under the
sequential protocol (validation carved from the end of train when ``valid.csv`` is absent); the general
protocol re-splits the user-item interactions they name (see :mod:`fairbench.data.checks`).

A row with a wrong field count, an empty user, an ``item_ids`` that is not a non-empty list of ids, or a
non-numeric timestamp is malformed; an id absent from the title file is an unknown item.
"""

from __future__ import annotations

import ast
import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from fairbench.data.dataset import FileDatasetSpec, _find
from fairbench.data.issues import DataIssues, location
from fairbench.data.parsing import clean_text, read_bytes, read_delimited
from fairbench.data.protocols import SequentialProtocol, SplitProtocol
from fairbench.data.types import RawInteractions, RawSamples
from fairbench.errors import UserError

SPLIT_FILES = ("train.csv", "valid.csv", "test.csv")
REQUIRED_COLUMNS = ("user_id", "item_ids", "timestamp")


@dataclass(kw_only=True)
class BigRecCSV(FileDatasetSpec):
    """Next-item samples in BIGRec's processed CSV format, with item titles."""

    name: str = "bigrec_csv"
    protocol: SplitProtocol = field(default_factory=SequentialProtocol)

    default_folder: ClassVar[str] = "bigrec_csv"
    instructions: ClassVar[str] = (
        "Put the processed train.csv, test.csv (and valid.csv) and id2name.json (or id2name.txt) of a "
        "BIGRec-style dataset in {folder}."
    )

    def required_files(self) -> list[tuple[str, ...]]:
        return [("train.csv",), ("test.csv",)]

    def optional_files(self) -> list[tuple[str, ...]]:
        return [("valid.csv",)]

    def locate(self, *, cache_dir: Path, data_dir: Path | None) -> list[Path]:
        folder = self.folder(data_dir)
        if not folder.is_dir():
            raise UserError(
                self.missing_message(folder, [*self.required_files(), ("id2name.json",)], data_dir)
            )
        found = super().locate(cache_dir=cache_dir, data_dir=data_dir)
        titles = sorted(folder.glob("id2name*.json"))
        if len(titles) > 1:
            raise UserError(
                f"{folder} has several item-title files ({', '.join(p.name for p in titles)}); "
                "keep the one that goes with these samples"
            )
        if not titles:
            titles, _ = _find(folder, [("id2name.txt",)])
        if not titles:
            raise UserError(self.missing_message(folder, [("id2name.json", "id2name.txt")], data_dir))
        return found + titles

    def read(self, files: list[Path]) -> RawInteractions:
        issues = self.new_issues()
        split_paths = {SPLIT_FILES.index(p.name): p for p in files if p.name in SPLIT_FILES}
        (title_path,) = [p for p in files if p.name not in SPLIT_FILES]
        items = read_titles(title_path, issues)
        parts = [read_samples(path, split, issues) for split, path in sorted(split_paths.items())]
        samples = RawSamples(
            user_id=np.concatenate([p["user_id"] for p in parts]),
            item_ids=np.concatenate([p["item_ids"] for p in parts]),
            indptr=np.concatenate([[0], np.cumsum(np.concatenate([p["lengths"] for p in parts]))]).astype(
                np.int64
            ),
            timestamp=np.concatenate([p["timestamp"] for p in parts]),
            split=np.concatenate([p["split"] for p in parts]).astype(np.int8),
            line=np.concatenate([p["line"] for p in parts]).astype(np.int64),
            files=split_paths,
        )
        return RawInteractions(
            None,
            items,
            source=f"BIGRec-style CSV files in {title_path.parent}",
            files=list(files),
            issues=issues,
            samples=samples,
            items_file=title_path,
        )


def read_samples(path: Path, split: int, issues: DataIssues) -> dict[str, np.ndarray]:
    """Columns of one split file: user_id [n], item_ids [m] (flat), lengths [n], timestamp, split, line."""
    try:
        text = read_bytes(path).decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 text ({err})") from err
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None:
        raise UserError(f"{path} is empty; expected a header with columns {', '.join(REQUIRED_COLUMNS)}")
    header = [name.strip() for name in header]
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        raise UserError(f"{location(path, 1)}: missing column(s) {missing}; found {header}")
    user_at, items_at, time_at = (header.index(name) for name in REQUIRED_COLUMNS)
    users: list[str] = []
    flat: list[str] = []
    lengths: list[int] = []
    times: list[float] = []
    lines: list[int] = []
    line = reader.line_num
    try:
        for row in reader:
            start, line = line + 1, reader.line_num
            if not row or all(not field.strip() for field in row):
                continue
            parsed = _parse_row(row, len(header), user_at, items_at, time_at)
            if isinstance(parsed, str):
                issues.report("malformed_rows", location(path, start), parsed)
                continue
            user, item_ids, timestamp = parsed
            users.append(user)
            flat.extend(item_ids)
            lengths.append(len(item_ids))
            times.append(timestamp)
            lines.append(start)
    except csv.Error as err:
        raise UserError(f"{location(path, line + 1)}: not valid CSV ({err})") from err
    n = len(users)
    return {
        "user_id": np.asarray(users, dtype=object).astype(str) if n else np.zeros(0, dtype=str),
        "item_ids": np.asarray(flat, dtype=object).astype(str) if flat else np.zeros(0, dtype=str),
        "lengths": np.asarray(lengths, dtype=np.int64),
        "timestamp": np.asarray(times, dtype=np.float64),
        "split": np.full(n, split, dtype=np.int8),
        "line": np.asarray(lines, dtype=np.int64),
    }


def _parse_row(
    row: list[str], n_fields: int, user_at: int, items_at: int, time_at: int
) -> tuple[str, list[str], float] | str:
    """(user, item ids, timestamp) of a CSV row, or what is wrong with it."""
    if len(row) != n_fields:
        return f"{len(row)} fields, the header has {n_fields}"
    user = row[user_at].strip()
    if not user:
        return "empty user_id"
    try:
        value: Any = ast.literal_eval(row[items_at].strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return f"item_ids {row[items_at][:60]!r} is not a Python-literal list"
    if not isinstance(value, (list, tuple)) or not value:
        return f"item_ids {row[items_at][:60]!r} is not a non-empty list"
    item_ids = []
    for entry in value:
        if isinstance(entry, bool) or not isinstance(entry, (int, str)) or str(entry).strip() == "":
            return f"item_ids holds {entry!r}, not an item id"
        item_ids.append(str(entry).strip())
    try:
        timestamp = float(row[time_at])
    except ValueError:
        return f"timestamp {row[time_at]!r} is not a number"
    if not np.isfinite(timestamp):
        return f"timestamp {row[time_at]!r} is not a number"
    return user, item_ids, timestamp


def read_titles(path: Path, issues: DataIssues) -> pd.DataFrame:
    """item_id, title, genres ([]) and line (txt only) from id2name*.json or id2name.txt."""
    if path.suffix == ".json":
        try:
            top = json.loads(read_bytes(path).decode("utf-8"), object_pairs_hook=_Pairs)
        except (UnicodeDecodeError, ValueError, RecursionError) as err:
            raise UserError(f"{path}: not a JSON object of item id -> title ({err})") from err
        if not isinstance(top, _Pairs):
            raise UserError(
                f"{path}: expected a JSON object of item id -> title, found a {type(top).__name__}"
            )
        items = pd.DataFrame(
            {
                "item_id": [str(key).strip() for key, _ in top],
                "title": [value if isinstance(value, str) else "" for _, value in top],
            }
        )
        bad = np.array([not isinstance(value, str) for _, value in top], dtype=bool)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            value = top[first][1]
            shown = dict(value) if isinstance(value, _Pairs) else value
            issues.report(
                "malformed_rows",
                str(path),
                f"the title of item {top[first][0]!r} is {shown!r}, not text",
                count=int(bad.sum()),
            )
            items = items[~bad]
    else:
        frame = read_delimited(path, "\t", 2, issues, encoding="utf-8")
        items = pd.DataFrame({"item_id": frame[1].str.strip(), "title": frame[0], "line": frame["line"]})
    items["title"] = items["title"].map(clean_text)
    empty_id = (items["item_id"] == "").to_numpy()
    if empty_id.any():
        issues.report("malformed_rows", str(path), "an item with an empty id", count=int(empty_id.sum()))
        items = items[~empty_id]
    items["genres"] = pd.Series([[] for _ in range(len(items))], index=items.index, dtype=object)
    return items.reset_index(drop=True)


class _Pairs(list):
    """A JSON object as its (key, value) pairs, so that repeated keys stay visible (duplicate items)."""
