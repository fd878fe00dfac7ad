"""Reading raw source files safely: gzip or plain text, JSON or Python-literal records, delimited lines.

Nothing here ever calls ``eval``: a Python-literal record is parsed with :func:`ast.literal_eval`, which
accepts only literals. A row that cannot be parsed is reported to :class:`~fairbench.data.issues.DataIssues`
("malformed_rows") with its file and line; a file that cannot be read at all (truncated gzip, not text) is a
:class:`~fairbench.errors.UserError`.
"""

from __future__ import annotations

import ast
import csv
import gzip
import html
import io
import json
import logging
import re
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fairbench.data.issues import DataIssues, location
from fairbench.errors import UserError

GZIP_MAGIC = b"\x1f\x8b"
PROGRESS_LINES = 1_000_000  # log progress every so many record lines (a Python literal takes ~0.1 ms)

log = logging.getLogger(__name__)


def is_gzip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) == GZIP_MAGIC


def read_bytes(path: Path) -> bytes:
    """The whole content of ``path``, decompressed when it is gzip (detected by its magic bytes)."""
    try:
        if is_gzip(path):
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise UserError(
            f"{path}: cannot be read ({err}); the file is damaged or truncated, get it again"
        ) from err


def iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, line without its ending) of every non-blank line of ``path`` (gzip or not)."""
    number = 0
    try:
        opener = gzip.open if is_gzip(path) else open
        with opener(path, "rb") as handle:
            for number, line in enumerate(handle, 1):  # noqa: B007 - number is used after the loop
                stripped = line.rstrip(b"\r\n")
                if stripped.strip():
                    yield number, stripped
    except (OSError, EOFError, zlib.error) as err:
        raise UserError(
            f"{location(path, number + 1)}: cannot be read ({err}); the file is damaged or truncated, "
            "get it again"
        ) from err


def parse_record(text: str) -> dict[str, Any] | None:
    """A JSON object, else a Python-literal dict (``ast.literal_eval``, never ``eval``); None if neither."""
    try:
        value = json.loads(text)
    except ValueError:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return None
    return value if isinstance(value, dict) else None


def iter_records(path: Path, issues: DataIssues) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) of every line of a JSON-lines / Python-literal-lines file; bad ones reported."""
    for number, raw in iter_lines(path):
        if number % PROGRESS_LINES == 0:
            log.info("%s: %d lines read", path, number)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            issues.report("malformed_rows", location(path, number), "not valid UTF-8")
            continue
        record = parse_record(text)
        if record is None:
            issues.report(
                "malformed_rows", location(path, number), "not a JSON object or Python-literal dict"
            )
            continue
        yield number, record


def read_delimited(
    path: Path, sep: str, n_fields: int, issues: DataIssues, encoding: str = "utf-8"
) -> pd.DataFrame:
    """str columns 0..n_fields-1 plus ``line`` (1-based) of a file of ``sep``-separated lines.

    Blank lines are skipped; a line with another number of fields is reported as malformed and dropped.
    ``latin-1`` decoding never fails; with ``utf-8`` an undecodable line is malformed. A well-formed file is
    read by pandas' C parser; any irregularity sends it through the line-by-line reader that reports it.
    """
    content = read_bytes(path)
    frame = _read_regular(content, sep, n_fields, encoding)
    if frame is not None:
        return frame
    try:
        text = content.decode(encoding)
        lines = pd.Series(text.split("\n"), dtype=object)
    except UnicodeDecodeError:
        decoded = []
        for number, raw in enumerate(content.split(b"\n"), 1):
            try:
                decoded.append(raw.decode(encoding))
            except UnicodeDecodeError:
                issues.report("malformed_rows", location(path, number), f"not valid {encoding}")
                decoded.append("")
        lines = pd.Series(decoded, dtype=object)
    lines = lines.str.rstrip("\r")
    numbers = np.arange(1, len(lines) + 1, dtype=np.int64)
    present = (lines.str.strip() != "").to_numpy()
    lines, numbers = lines[present], numbers[present]
    fields = lines.str.count(re.escape(sep)).to_numpy() + 1
    bad = fields != n_fields
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        issues.report(
            "malformed_rows",
            location(path, int(numbers[first])),
            f"{fields[first]} {sep!r}-separated fields, expected {n_fields}",
            count=int(bad.sum()),
        )
    good = lines[~bad]
    if len(good):
        frame = good.str.split(sep, n=n_fields - 1, expand=True, regex=False)
    else:
        frame = pd.DataFrame(columns=range(n_fields), dtype=object)
    frame.columns = range(n_fields)
    frame = frame.reset_index(drop=True)
    frame["line"] = numbers[~bad]
    return frame


_UNIT_SEPARATOR = b"\x1f"


def _read_regular(content: bytes, sep: str, n_fields: int, encoding: str) -> pd.DataFrame | None:
    """The file parsed by pandas' C reader when every non-empty line has exactly ``n_fields`` fields, else
    None. Checked, not assumed: byte-level field counts per line, then the parsed shape."""
    separator = sep.encode(encoding)
    if not content or _UNIT_SEPARATOR in content or b"\r" in content:
        return None
    data = np.frombuffer(content, dtype=np.uint8)
    ends = np.flatnonzero(data == 10)
    if len(ends) == 0 or ends[-1] != len(data) - 1:
        ends = np.append(ends, len(data))
    starts = np.concatenate([[0], ends[:-1] + 1])
    empty = ends == starts
    if len(separator) == 1:
        hits = np.flatnonzero(data == separator[0])
    else:
        width = len(data) - len(separator) + 1
        hits = np.flatnonzero(np.all([data[k : k + width] == b for k, b in enumerate(separator)], axis=0))
        if len(hits) > 1 and np.any(np.diff(hits) < len(separator)):
            return None  # overlapping separators (":::"): leave it to the careful reader
    per_line = np.bincount(np.searchsorted(ends, hits), minlength=len(ends))
    if np.any(per_line[~empty] != n_fields - 1):
        return None
    try:
        frame = pd.read_csv(
            io.BytesIO(content.replace(separator, _UNIT_SEPARATOR)),
            sep="\x1f",
            header=None,
            names=list(range(n_fields)),
            dtype=str,
            na_filter=False,
            quoting=csv.QUOTE_NONE,
            encoding=encoding,
            skip_blank_lines=True,
            engine="c",
        )
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError):
        return None
    numbers = np.flatnonzero(~empty).astype(np.int64) + 1
    if len(frame) != len(numbers):
        return None
    frame["line"] = numbers
    return frame


def interaction_frame(
    frame: pd.DataFrame, path: Path, issues: DataIssues, lines: np.ndarray | None = None
) -> pd.DataFrame:
    """Clean interactions: user_id / item_id (stripped str), rating / timestamp (float64), line (int64).

    ``frame`` has user_id and item_id and optionally rating and timestamp (absent = NaN: the source has none).
    Rows with an empty id or a non-numeric timestamp are malformed, rows with a non-numeric rating are
    reported as such; both are dropped. ``lines`` are the rows' line numbers (default: row index + 1).
    """
    n = len(frame)
    lines = np.arange(1, n + 1, dtype=np.int64) if lines is None else np.asarray(lines, dtype=np.int64)
    out = pd.DataFrame(
        {
            "user_id": frame["user_id"].astype(str).str.strip().to_numpy(dtype=object),
            "item_id": frame["item_id"].astype(str).str.strip().to_numpy(dtype=object),
        }
    )
    keep = np.ones(n, dtype=bool)
    empty = ((out["user_id"] == "") | (out["item_id"] == "")).to_numpy()
    _report_first(issues, "malformed_rows", empty, path, lines, lambda i: "empty user or item id")
    keep &= ~empty
    for column, kind in (("rating", "non_numeric_ratings"), ("timestamp", "malformed_rows")):
        if column not in frame:
            out[column] = np.nan
            continue
        raw = frame[column].reset_index(drop=True)
        values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
        bad = keep & ~np.isfinite(values)
        _report_first(
            issues, kind, bad, path, lines, lambda i, c=column, r=raw: f"{c} {r.iloc[i]!r} is not a number"
        )
        keep &= ~bad
        out[column] = values
    out["line"] = lines
    return out[keep].reset_index(drop=True)


def _report_first(
    issues: DataIssues,
    kind: str,
    mask: np.ndarray,
    path: Path,
    lines: np.ndarray,
    detail: Callable[[int], str],
) -> None:
    """Report the rows where ``mask`` holds as one ``kind``, described by its first row."""
    if mask.any():
        first = int(np.flatnonzero(mask)[0])
        issues.report(kind, location(path, int(lines[first])), detail(first), count=int(mask.sum()))


def clean_text(value: Any) -> str:
    """A title or genre as plain text: HTML entities unescaped (``&amp;`` -> ``&``), outer spaces removed."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return html.unescape(str(value)).strip()


def year_from_title(titles: pd.Series) -> pd.Series:
    """Nullable Int64 year from a trailing "(YYYY)" in a title (MovieLens style), else missing."""
    found = titles.str.extract(r"\((\d{4})\)\s*$", expand=False)
    return pd.to_numeric(found, errors="coerce").astype("Int64")
