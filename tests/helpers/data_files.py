"""Small source files in the real formats of every dataset family, with the real quirks, for the data tests.

Writers (used by tests/test_data_loaders.py, tests/test_data_protocols.py, tests/test_data_bad.py):
MovieLens-1M ``::``-separated latin-1 files; Steam and Amazon-2014 meta as Python-literal lines (written
with ``repr``, so single quotes, ``True``/``False``), Amazon reviews and 2018 meta as JSON lines, all
gzip-compressed; BIGRec-style CSVs with Python-literal item lists and an id2name file. The tests at the
tests in tests/test_data_fixtures.py check that the fixtures really have those properties (a fixture
without its quirk tests nothing).
"""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np

GENRES = ["Action", "Comedy", "Drama", "Horror", "Sci-Fi"]


Sequences = list[tuple[str, list[str], list[int]]]


def sequences(n_users: int, n_items: int, length: int, seed: int = 0) -> Sequences:
    """(user id, item ids, timestamps) per user: ``length`` distinct items with increasing times.

    Users start at different times so that a global temporal split mixes them; items are drawn with a
    popularity skew (lower ids more often) so that popularity groups differ in size of interactions.
    """
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_items + 1)
    out = []
    for user in range(1, n_users + 1):
        items = rng.choice(np.arange(1, n_items + 1), size=length, replace=False, p=weights / weights.sum())
        start = 1_000_000 + 5_000 * user
        times = (start + 1_000 * np.arange(length) + rng.integers(0, 500, size=length)).tolist()
        out.append((str(user), [str(i) for i in items], [int(t) for t in times]))
    return out


def interaction_rows(seqs: Sequences, rating: float = 4.0) -> list[tuple]:
    """(user, item, rating, timestamp) rows of ``sequences``."""
    return [(u, i, rating, t) for u, items, times in seqs for i, t in zip(items, times, strict=True)]


# --------------------------------------------------------------------------------------------- MovieLens-1M


def ml1m_title(item: int) -> str:
    return "Café au Lait (1993)" if item == 3 else f"Movie {item} ({1980 + item})"


def write_ml1m(
    folder: Path, rows: list[tuple], n_items: int, extra_ratings: str = "", extra_movies: str = ""
):
    """ratings.dat / movies.dat as GroupLens writes them: ``::``-separated, latin-1, genres split by ``|``."""
    folder.mkdir(parents=True, exist_ok=True)
    ratings = "".join(f"{u}::{i}::{r:g}::{t}\n" for u, i, r, t in rows) + extra_ratings
    (folder / "ratings.dat").write_bytes(ratings.encode("latin-1"))
    movies = "".join(
        f"{i}::{ml1m_title(i)}::{GENRES[i % 5]}|{GENRES[(i + 2) % 5]}\n" for i in range(1, n_items + 1)
    )
    (folder / "movies.dat").write_bytes((movies + extra_movies).encode("latin-1"))
    return folder


# ---------------------------------------------------------------------------------------------------- Steam


def write_gz_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("".join(line + "\n" for line in lines))
    return path


def steam_review(user: str, item: str, date: str) -> str:
    """A review line as in steam_reviews.json.gz: a Python-literal dict (single quotes, True/False)."""
    record = {
        "username": f"player {user}",
        "hours": 12.5,
        "products": 3,
        "product_id": item,
        "page_order": 0,
        "date": date,
        "text": "Didn't expect it to be this good",
        "early_access": False,
        "page": 1,
    }
    return repr(record)


def steam_game(item: int) -> dict:
    return {
        "publisher": "Kotoshiro",
        "genres": [GENRES[item % 5], "Indie"],
        "app_name": f"Game {item} & Friends",
        "title": f"Game {item} & Friends",
        "url": f"http://store.steampowered.com/app/{item}/",
        "release_date": f"{2000 + item}-01-04",
        "tags": ["Strategy", "Indie"],
        "price": 4.99,
        "early_access": False,
        "id": str(item),
        "developer": "Kotoshiro",
        "sentiment": "Mostly Positive",
        "metascore": 80,
    }


def write_steam(folder: Path, seqs, n_items: int, extra_reviews=(), extra_games=(), games=None) -> Path:
    import datetime

    lines = []
    for user, items, times in seqs:
        for item, t in zip(items, times, strict=True):
            day = datetime.datetime.fromtimestamp(t * 60, tz=datetime.timezone.utc).strftime("%Y-%m-%d")
            lines.append(steam_review(user, item, day))
    write_gz_lines(folder / "steam_reviews.json.gz", lines + list(extra_reviews))
    games = games if games is not None else [steam_game(i) for i in range(1, n_items + 1)]
    write_gz_lines(folder / "steam_games.json.gz", [repr(g) for g in games] + list(extra_games))
    return folder


# --------------------------------------------------------------------------------------------------- Amazon


def amazon_review(user: str, item: str, rating, t: int) -> dict:
    return {
        "reviewerID": f"A{user}X",
        "asin": f"B{int(item):09d}",
        "reviewerName": "J. McDonald",
        "helpful": [2, 3],
        "reviewText": "Great read.",
        "overall": rating,
        "summary": "Five Stars",
        "unixReviewTime": t,
        "reviewTime": "09 13, 2009",
    }


def amazon_meta(item: int, release: int) -> dict:
    asin = f"B{item:09d}"
    sub = ["Literature &amp; Fiction", "Children&#39;s Books", "Mystery"][item % 3]
    if release == 2014:
        return {
            "asin": asin,
            "title": f"Book {item} &amp; More",
            "price": 3.17,
            "salesRank": {"Books": 211836},
            "categories": [["Books", sub, "Classics"], ["Books", "Kindle"]],
        }
    return {"asin": asin, "title": f"Book {item} &amp; More", "category": ["Books", sub, "Genre Fiction"]}


def write_amazon(
    folder: Path, category: str, release: int, rows, n_items: int, extra_reviews=(), extra_meta=(), metas=None
) -> Path:
    """2014: reviews_<C>_5.json.gz (JSON) + meta_<C>.json.gz (Python literals); 2018: all JSON lines."""
    reviews = [json.dumps(amazon_review(u, i, r, t)) for u, i, r, t in rows] + list(extra_reviews)
    stem = f"reviews_{category}_5" if release == 2014 else f"{category}_5"
    write_gz_lines(folder / f"{stem}.json.gz", reviews)
    metas = metas if metas is not None else [amazon_meta(i, release) for i in range(1, n_items + 1)]
    encode = repr if release == 2014 else json.dumps
    write_gz_lines(folder / f"meta_{category}.json.gz", [encode(m) for m in metas] + list(extra_meta))
    return folder


# ------------------------------------------------------------------------------------------------ BIGRec CSV


def bigrec_samples(seqs, history_length: int = 10) -> list[tuple[str, list[int], int]]:
    """(user, item_ids with the target last, target time) for every position >= 1 of every sequence."""
    out = []
    for user, items, times in seqs:
        ids = [int(i) for i in items]
        for p in range(1, len(ids)):
            out.append((user, ids[max(0, p - history_length) : p + 1], times[p]))
    return out


def write_bigrec(folder: Path, samples, n_items: int, with_valid=True, titles="json", extra=None) -> dict:
    """train/valid/test.csv split 8:1:1 by time, plus id2name.json or id2name.txt."""
    folder.mkdir(parents=True, exist_ok=True)
    ordered = sorted(samples, key=lambda s: (s[2], s[0]))
    n = len(ordered)
    cuts = {"train": ordered[: int(0.8 * n)], "valid": ordered[int(0.8 * n) : int(0.9 * n)]}
    cuts["test"] = ordered[int(0.9 * n) :]
    if not with_valid:
        cuts["train"] = cuts["train"] + cuts.pop("valid")
    for split, rows in cuts.items():
        with open(folder / f"{split}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["user_id", "item_ids", "timestamp"])
            for user, ids, t in rows:
                writer.writerow([user, str(ids), t])
            for line in (extra or {}).get(split, []):
                handle.write(line + "\n")
    names = {str(i): ml1m_title(i) for i in range(1, n_items + 1)}
    if titles == "json":
        (folder / "id2name.json").write_text(json.dumps(names, ensure_ascii=False), encoding="utf-8")
    else:
        lines = "".join(f"{t}\t{i}\n" for i, t in names.items())
        (folder / "id2name.txt").write_text(lines, encoding="utf-8")
    return cuts
