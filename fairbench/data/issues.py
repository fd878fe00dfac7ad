"""Bad data in source files: counted, dropped with a warning, or (``dataset.strict=true``) rejected.

Every loader and :func:`fairbench.data.checks.clean_raw` report what they find to one :class:`DataIssues`
per load. Policy, for every kind in :data:`ISSUE_KINDS`:

- ``strict=false`` (default): the offending rows / items are dropped (duplicate interactions: only the
  earliest is kept, by the protocol), the count and the first place it happened are kept in
  ``InteractionData.info["issues"]``, logged as a warning at every load and shown by ``fairbench data stats``;
- ``strict=true``: the first problem raises :class:`~fairbench.errors.UserError` naming the file and line.

Item-table problems count only for items some interaction or sample names ("used" items).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fairbench.errors import UserError

log = logging.getLogger(__name__)

# kind -> what is counted (shown by `fairbench data stats`)
ISSUE_KINDS: dict[str, str] = {
    "malformed_rows": "malformed rows (field count, syntax, missing or empty field, bad time)",
    "non_numeric_ratings": "rows with a non-numeric rating",
    "duplicate_items": "item-table rows repeating the id of a used item (the first is kept)",
    "empty_titles": "used items with a missing or empty title",
    "untitled_item_interactions": "interactions or samples of those items",
    "unknown_items": "interactions or samples naming an item absent from the item table",
    "duplicate_interactions": "repeated (user, item) interactions (the earliest is kept)",
}


def location(path: Path | str, line: int | None = None) -> str:
    """``"<path>, line <n>"`` (or just the path)."""
    return f"{path}, line {line}" if line is not None else str(path)


class DataIssues:
    """Counts of bad data per kind plus the first occurrence of each; raises at once when ``strict``."""

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict
        self.counts: dict[str, int] = dict.fromkeys(ISSUE_KINDS, 0)
        self.first: dict[str, str] = {}

    def report(self, kind: str, where: str, detail: str, count: int = 1) -> None:
        """Record ``count`` occurrences of ``kind``; ``where`` / ``detail`` describe the first of them."""
        if kind not in ISSUE_KINDS:
            raise ValueError(f"unknown data issue kind {kind!r}")
        if count <= 0:
            return
        if self.strict:
            raise UserError(
                f"{where}: {detail}. dataset.strict=true rejects bad data: fix the file, or set "
                "dataset.strict=false to drop such rows with a warning"
            )
        self.counts[kind] += int(count)
        self.first.setdefault(kind, f"{where}: {detail}")

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> dict[str, dict[str, Any]]:
        """``{kind: {"count": n, "first": "<file>, line <n>: <detail>"}}`` for every kind (JSON-able)."""
        return {kind: {"count": self.counts[kind], "first": self.first.get(kind, "")} for kind in ISSUE_KINDS}


def warn_issues(name: str, summary: dict[str, dict[str, Any]] | None) -> None:
    """Log one warning per kind of bad data that was dropped while building dataset ``name``."""
    for kind, entry in (summary or {}).items():
        if entry.get("count"):
            log.warning(
                "dataset %s: dropped %d %s; first: %s (`fairbench data stats` counts them all; "
                "dataset.strict=true rejects bad data instead)",
                name,
                entry["count"],
                ISSUE_KINDS.get(kind, kind),
                entry.get("first", ""),
            )
