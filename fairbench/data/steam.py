"""Steam reviews as released with SASRec (Kang & McAuley, ICDM 2018), used by IFairLRS and LLaRA.

Files (https://cseweb.ucsd.edu/~wckang/, listed in the SASRec README), one Python-literal dict per line
(single quotes, ``True``/``False``: parsed with :func:`ast.literal_eval`, never ``eval``), gzip-compressed or
not:

- ``steam_reviews.json.gz``: one review per line, e.g. ``{'username': 'Chaos Syren', 'hours': 0.1,
  'product_id': '725280', 'date': '2017-12-17', 'text': '...', ...}``. user = ``username`` (as SASRec and
  the public loaders do; only some reviews have a numeric ``user_id``), item = ``product_id``, time =
  ``date`` (UTC midnight, seconds since 1970). No rating.
- ``steam_games.json.gz``: one game per line, e.g. ``{'app_name': 'Lost Summoner Kitty', 'genres':
  ['Action', 'Casual'], 'tags': [...], 'id': '761140', 'release_date': '2018-01-04', ...}``. title =
  ``app_name`` (else ``title``); genres = ``genres``, or ``tags`` when a game has no ``genres``; year = the
  year of ``release_date`` when it starts with four digits.

A review without username / product_id / a ``YYYY-MM-DD`` date, or a game without id, is a malformed row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from fairbench.data.dataset import FileDatasetSpec
from fairbench.data.issues import DataIssues, location
from fairbench.data.parsing import clean_text, interaction_frame, iter_records
from fairbench.data.protocols import SequentialProtocol, SplitProtocol
from fairbench.data.types import RawInteractions

REVIEWS = ("steam_reviews.json.gz", "steam_reviews.json")
GAMES = ("steam_games.json.gz", "steam_games.json")


@dataclass(kw_only=True)
class Steam(FileDatasetSpec):
    """Steam reviews (7.8M reviews by 2.6M users of 15k games, 2010-18) with game titles and genres."""

    name: str = "steam"
    protocol: SplitProtocol = field(default_factory=SequentialProtocol)

    default_folder: ClassVar[str] = "steam"
    instructions: ClassVar[str] = "Download {urls} into {folder} (keep them gzip-compressed)."

    def required_files(self) -> list[tuple[str, ...]]:
        return [REVIEWS, GAMES]

    def read(self, files: list[Path]) -> RawInteractions:
        reviews_path, games_path = files
        issues = self.new_issues()
        interactions = read_steam_reviews(reviews_path, issues)
        items = read_steam_games(games_path, issues)
        return RawInteractions(
            interactions,
            items,
            source=f"Steam files in {reviews_path.parent}",
            files=list(files),
            issues=issues,
            interactions_file=reviews_path,
            items_file=games_path,
        )


def read_steam_reviews(path: Path, issues: DataIssues) -> pd.DataFrame:
    """user_id, item_id, rating (NaN), timestamp, line of every well-formed review."""
    users, items, dates, lines = [], [], [], []
    for number, record in iter_records(path, issues):
        user, item, date = record.get("username"), record.get("product_id"), record.get("date")
        if user is None or item is None or not isinstance(date, str):
            missing = [k for k, v in (("username", user), ("product_id", item), ("date", date)) if v is None]
            detail = f"missing {', '.join(missing)}" if missing else f"date {date!r} is not text"
            issues.report("malformed_rows", location(path, number), detail)
            continue
        users.append(str(user))
        items.append(str(item))
        dates.append(date)
        lines.append(number)
    parsed = pd.to_datetime(pd.Series(dates, dtype=object), format="%Y-%m-%d", errors="coerce", utc=True)
    seconds = (parsed - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(dtype=np.float64)
    bad = np.isnan(seconds)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        issues.report(
            "malformed_rows",
            location(path, lines[first]),
            f"date {dates[first]!r} is not YYYY-MM-DD",
            count=int(bad.sum()),
        )
    frame = pd.DataFrame({"user_id": users, "item_id": items, "timestamp": seconds})[~bad]
    return interaction_frame(frame, path, issues, lines=np.asarray(lines, dtype=np.int64)[~bad])


def read_steam_games(path: Path, issues: DataIssues) -> pd.DataFrame:
    """item_id, title, genres, year, line of every game with an id."""
    rows: list[dict[str, Any]] = []
    for number, record in iter_records(path, issues):
        item = record.get("id")
        if item is None or str(item).strip() == "":
            issues.report("malformed_rows", location(path, number), "game without an id")
            continue
        title = record.get("app_name")
        if title is None or clean_text(title) == "":
            title = record.get("title")
        genres = _text_list(record.get("genres")) or _text_list(record.get("tags"))
        release = record.get("release_date")
        year = int(release[:4]) if isinstance(release, str) and release[:4].isdigit() else None
        rows.append(
            {
                "item_id": str(item).strip(),
                "title": clean_text(title),
                "genres": genres,
                "year": year,
                "line": number,
            }
        )
    items = pd.DataFrame(rows, columns=["item_id", "title", "genres", "year", "line"])
    items["year"] = pd.array(items["year"].tolist(), dtype="Int64")
    return items


def _text_list(value: Any) -> list[str]:
    """Distinct non-empty strings of a list value, in order; [] for anything else."""
    if not isinstance(value, (list, tuple)):
        return []
    out: list[str] = []
    for entry in value:
        text = clean_text(entry)
        if text and text not in out:
            out.append(text)
    return out
