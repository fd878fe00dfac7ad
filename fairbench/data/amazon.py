"""Amazon review dumps (McAuley et al.), the 2014 and 2018 releases, 5-core review files plus metadata.

Files, per category (e.g. ``Books``, ``Movies_and_TV``, ``Video_Games``), gzip-compressed or not:

- 2014 (He & McAuley, WWW 2016): ``reviews_<Category>_5.json.gz`` (JSON lines: reviewerID, asin, overall,
  unixReviewTime, ...) and ``meta_<Category>.json.gz`` (one **Python-literal** dict per line: asin, title,
  categories = a list of category paths such as ``[['Books', 'Literature & Fiction', 'Classics']]``, ...);
- 2018 (Ni, Li & McAuley, EMNLP 2019): ``<Category>_5.json.gz`` (JSON lines, same review fields) and
  ``meta_<Category>.json.gz`` (JSON lines: asin, title, category = one path such as ``["Books",
  "Literature & Fiction", "Genre Fiction"]``, ...).

user = reviewerID, item = asin, rating = overall (1-5), time = unixReviewTime. title = meta ``title`` with
HTML entities unescaped (``&amp;`` -> ``&``). Genres = the element at index ``genre_depth`` of every category
path (0 = the top level, which is the store category itself, e.g. "Books"; 1 = its sub-categories, the
default), entities unescaped, distinct, in file order; an item whose paths are all shorter has no genre.
Every record is parsed as JSON, else with :func:`ast.literal_eval` (never ``eval``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd

from fairbench.data.dataset import FileDatasetSpec
from fairbench.data.issues import DataIssues, location
from fairbench.data.parsing import clean_text, interaction_frame, iter_records
from fairbench.data.types import RawInteractions
from fairbench.errors import UserError

RELEASES = (2014, 2018)
REVIEW_FIELDS = {
    "reviewerID": "user_id",
    "asin": "item_id",
    "overall": "rating",
    "unixReviewTime": "timestamp",
}


@dataclass(kw_only=True)
class AmazonReviews(FileDatasetSpec):
    """One category of the Amazon review dumps (2014 or 2018 release): 5-core reviews, titles, categories.

    ``category`` is the file-name spelling (``Books``, ``Movies_and_TV``, ``Video_Games``...). ``release``
    None = whichever release's review file is in the folder (an error if both are). ``genre_depth`` picks
    the level of the category paths that gives the genres (see the module docstring).
    """

    name: str = "amazon"
    category: str | None = None
    release: Literal[2014, 2018] | None = None
    genre_depth: int = 1

    default_folder: ClassVar[str] = "amazon"
    instructions: ClassVar[str] = (
        "Download the category's 5-core review file and its metadata file (e.g. {urls}) into {folder}, "
        "keeping the original file names."
    )

    def check(self) -> None:
        """UserError for a missing or odd category, release or depth (checked when files are looked up, so
        that ``fairbench train dataset=amazon`` without a category ends in one message)."""
        if self.category is None or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_&-]*", self.category):
            raise UserError(
                f"dataset.category={self.category!r}: name an Amazon category as its files spell it, e.g. "
                "dataset.category=Books, Movies_and_TV, Video_Games, Electronics"
            )
        if self.release is not None and self.release not in RELEASES:
            raise UserError(f"dataset.release={self.release!r}: expected 2014, 2018 or null (detect)")
        if self.genre_depth < 0:
            raise UserError(f"dataset.genre_depth={self.genre_depth}: must be >= 0 (0 = top level)")

    def review_names(self, release: int) -> tuple[str, ...]:
        stem = f"reviews_{self.category}_5" if release == 2014 else f"{self.category}_5"
        return (f"{stem}.json.gz", f"{stem}.json")

    def meta_names(self) -> tuple[str, ...]:
        return (f"meta_{self.category}.json.gz", f"meta_{self.category}.json")

    def required_files(self) -> list[tuple[str, ...]]:
        releases = [self.release] if self.release is not None else list(RELEASES)
        reviews = tuple(name for release in releases for name in self.review_names(release))
        return [reviews, self.meta_names()]

    def locate(self, *, cache_dir: Path, data_dir: Path | None) -> list[Path]:
        self.check()
        files = super().locate(cache_dir=cache_dir, data_dir=data_dir)
        if self.release is None:
            folder = files[0].parent
            present = [r for r in RELEASES if any((folder / n).is_file() for n in self.review_names(r))]
            if len(present) > 1:
                raise UserError(
                    f"{folder} holds the {self.category} reviews of both the 2014 and the 2018 release; "
                    "choose one with dataset.release=2014 or dataset.release=2018"
                )
        return files

    def read(self, files: list[Path]) -> RawInteractions:
        self.check()
        reviews_path, meta_path = files
        release = 2014 if reviews_path.name.startswith("reviews_") else 2018
        issues = self.new_issues()
        interactions = read_amazon_reviews(reviews_path, issues)
        items = read_amazon_meta(meta_path, issues, self.genre_depth)
        return RawInteractions(
            interactions,
            items,
            source=f"Amazon {release} {self.category} files in {reviews_path.parent}",
            files=list(files),
            issues=issues,
            interactions_file=reviews_path,
            items_file=meta_path,
        )


def read_amazon_reviews(path: Path, issues: DataIssues) -> pd.DataFrame:
    """user_id, item_id, rating, timestamp, line of every review with reviewer, asin, overall and time."""
    columns: dict[str, list[Any]] = {name: [] for name in REVIEW_FIELDS.values()}
    lines = []
    for number, record in iter_records(path, issues):
        missing = [key for key in REVIEW_FIELDS if record.get(key) is None]
        if missing:
            issues.report("malformed_rows", location(path, number), f"missing {', '.join(missing)}")
            continue
        for key, name in REVIEW_FIELDS.items():
            columns[name].append(record[key])
        lines.append(number)
    frame = pd.DataFrame({name: pd.Series(values, dtype=object) for name, values in columns.items()})
    return interaction_frame(frame, path, issues, lines=np.asarray(lines, dtype=np.int64))


def read_amazon_meta(path: Path, issues: DataIssues, genre_depth: int) -> pd.DataFrame:
    """item_id, title, genres, line of every metadata record with an asin."""
    rows: list[dict[str, Any]] = []
    for number, record in iter_records(path, issues):
        asin = record.get("asin")
        if asin is None or str(asin).strip() == "":
            issues.report("malformed_rows", location(path, number), "record without an asin")
            continue
        paths = category_paths(record.get("categories", record.get("category")))
        genres: list[str] = []
        for category_path in paths:
            if len(category_path) > genre_depth:
                genre = clean_text(category_path[genre_depth])
                if genre and genre not in genres:
                    genres.append(genre)
        rows.append(
            {
                "item_id": str(asin).strip(),
                "title": clean_text(record.get("title")),
                "genres": genres,
                "line": number,
            }
        )
    return pd.DataFrame(rows, columns=["item_id", "title", "genres", "line"])


def category_paths(value: Any) -> list[list[Any]]:
    """Category paths from 2014 ``categories`` (a list of paths) or 2018 ``category`` (one path)."""
    if not isinstance(value, (list, tuple)) or not value:
        return []
    if all(isinstance(entry, (list, tuple)) for entry in value):
        return [list(entry) for entry in value]
    return [[entry for entry in value if not isinstance(entry, (list, tuple, dict))]]
