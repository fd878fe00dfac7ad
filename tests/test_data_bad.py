"""Bad data in every loader's files: counted, dropped with a warning and shown by `fairbench data stats`, or
with dataset.strict=true rejected naming file and line; garbage never ends in a traceback."""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import re
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fairbench.data import (
    ISSUE_KINDS,
    AmazonReviews,
    BigRecCSV,
    GeneralProtocol,
    MovieLens1M,
    SequentialProtocol,
    Steam,
    dataset_stats,
    load_dataset,
)
from fairbench.errors import UserError
from tests.helpers.data_files import (
    amazon_meta,
    amazon_review,
    bigrec_samples,
    interaction_rows,
    sequences,
    steam_game,
    steam_review,
    write_amazon,
    write_bigrec,
    write_gz_lines,
    write_ml1m,
    write_steam,
)

SEQS = sequences(6, 10, 5)  # 30 interactions: the bad rows come after line 30 of the interaction file
ROWS = interaction_rows(SEQS)
LOOSE = GeneralProtocol(min_user_interactions=1, min_rating=None)
U1, I1, T1 = ROWS[0][0], ROWS[0][1], ROWS[0][3]  # the first interaction


@dataclass
class Case:
    spec: object
    counts: dict[str, int]  # expected issue counts (others are 0)
    where: str  # file name and line of the first problem, as the strict error names it
    interactions: int | None = None  # interactions (or samples) left for the protocol


def ml1m_case(tmp: Path, ratings: str = "", movies: str = "") -> MovieLens1M:
    write_ml1m(tmp / "ml", ROWS, 10, extra_ratings=ratings, extra_movies=movies)
    return MovieLens1M(path=str(tmp / "ml"), protocol=LOOSE)


def steam_case(tmp: Path, reviews=(), games=()) -> Steam:
    write_steam(tmp / "steam", SEQS, 10, extra_reviews=reviews, extra_games=games)
    return Steam(path=str(tmp / "steam"))


def amazon_case(tmp: Path, reviews=(), metas=None, extra_meta=()) -> AmazonReviews:
    write_amazon(
        tmp / "amz", "Books", 2014, ROWS, 10, extra_reviews=reviews, metas=metas, extra_meta=extra_meta
    )
    return AmazonReviews(category="Books", path=str(tmp / "amz"), protocol=LOOSE)


def bigrec_case(tmp: Path, train=(), names=None) -> BigRecCSV:
    write_bigrec(tmp / "br", bigrec_samples(SEQS), 10, extra={"train": list(train)})
    if names is not None:
        (tmp / "br" / "id2name.json").write_text(names, encoding="utf-8")
    return BigRecCSV(path=str(tmp / "br"))


def title_json(**changes: str) -> str:
    names = {str(i): f"Movie {i}" for i in range(1, 11)} | changes
    return json.dumps(names)


# Each case: (builder, expected counts, where). Lines: ratings/reviews line 31 is the first extra row; the
# BIGRec train.csv has a header and floor(0.8 x 24) = 19 samples, so its first extra row is line 21.
UNTITLED_GAME = {k: v for k, v in steam_game(11).items() if k not in ("app_name", "title")}
NEW_ITEM = min({str(i) for i in range(1, 11)} - set(SEQS[0][1]))  # an item user 1 never had
CASES = {
    "ml1m-malformed": (lambda t: ml1m_case(t, "1::2::4\n"), {"malformed_rows": 1}, "ratings.dat, line 31"),
    "ml1m-non-numeric-rating": (
        lambda t: ml1m_case(t, "1::2::four::5\n"),
        {"non_numeric_ratings": 1},
        "ratings.dat, line 31",
    ),
    "ml1m-bad-timestamp": (
        lambda t: ml1m_case(t, "1::2::4::soon\n"),
        {"malformed_rows": 1},
        "ratings.dat, line 31",
    ),
    "ml1m-unknown-item": (
        lambda t: ml1m_case(t, "1::99::4::5\n"),
        {"unknown_items": 1},
        "ratings.dat, line 31",
    ),
    "ml1m-empty-title": (
        lambda t: ml1m_case(t, "1::11::4::5\n2::11::4::5\n", "11::  ::Drama\n"),
        {"empty_titles": 1, "untitled_item_interactions": 2},
        "movies.dat, line 11",
    ),
    "ml1m-duplicate-interaction": (
        lambda t: ml1m_case(t, f"{U1}::{I1}::5::{T1 + 1}\n"),
        {"duplicate_interactions": 1},
        "ratings.dat, line 31",
    ),
    "ml1m-duplicate-item": (
        lambda t: ml1m_case(t, movies="1::Another Title (1999)::Drama\n"),
        {"duplicate_items": 1},
        "movies.dat, line 11",
    ),
    "steam-not-a-literal": (
        lambda t: steam_case(t, ["{'username': 'x', 'product_id': '1', "]),
        {"malformed_rows": 1},
        "steam_reviews.json.gz, line 31",
    ),
    "steam-code-is-not-run": (
        lambda t: steam_case(t, ["__import__('os').system('touch PWNED')"]),
        {"malformed_rows": 1},
        "steam_reviews.json.gz, line 31",
    ),
    "steam-missing-field": (
        lambda t: steam_case(t, [repr({"username": "x", "date": "2017-01-01"})]),
        {"malformed_rows": 1},
        "steam_reviews.json.gz, line 31",
    ),
    "steam-bad-date": (
        lambda t: steam_case(t, [steam_review("1", "2", "2017-13-45")]),
        {"malformed_rows": 1},
        "steam_reviews.json.gz, line 31",
    ),
    "steam-unknown-item": (
        lambda t: steam_case(t, [steam_review("1", "77", "2017-01-01")]),
        {"unknown_items": 1},
        "steam_reviews.json.gz, line 31",
    ),
    "steam-game-without-id": (
        lambda t: steam_case(t, games=[repr({"app_name": "No Id"})]),
        {"malformed_rows": 1},
        "steam_games.json.gz, line 11",
    ),
    "steam-game-without-title": (
        lambda t: steam_case(t, [steam_review("1", "11", "2017-01-01")], [repr(UNTITLED_GAME)]),
        {"empty_titles": 1, "untitled_item_interactions": 1},  # neither app_name nor title
        "steam_games.json.gz, line 11",
    ),
    "amazon-non-numeric-rating": (
        lambda t: amazon_case(t, [json.dumps(amazon_review("1", "2", "five", 5))]),
        {"non_numeric_ratings": 1},
        "reviews_Books_5.json.gz, line 31",
    ),
    "amazon-not-json": (
        lambda t: amazon_case(t, ['{"reviewerID": "A1X", "asin": ']),
        {"malformed_rows": 1},
        "reviews_Books_5.json.gz, line 31",
    ),
    "amazon-unknown-item": (
        lambda t: amazon_case(t, [json.dumps(amazon_review("1", "99", 5.0, 5))]),
        {"unknown_items": 1},
        "reviews_Books_5.json.gz, line 31",
    ),
    "amazon-missing-title": (
        lambda t: amazon_case(
            t, metas=[amazon_meta(i, 2014) for i in range(1, 11) if i != 2] + [{"asin": "B000000002"}]
        ),
        {"empty_titles": 1, "untitled_item_interactions": sum(r[1] == "2" for r in ROWS)},
        "meta_Books.json.gz, line 10",
    ),
    "amazon-duplicate-meta": (
        lambda t: amazon_case(t, extra_meta=[repr(amazon_meta(3, 2014))]),
        {"duplicate_items": 1},
        "meta_Books.json.gz, line 11",
    ),
    "bigrec-unknown-item-in-sequence": (
        lambda t: bigrec_case(t, ['1,"[1, 999, 2]",1000'] * 2),
        {"unknown_items": 2},
        "train.csv, line 21",
    ),
    "bigrec-malformed-list": (
        lambda t: bigrec_case(t, ['1,"[1, 2",1000']),
        {"malformed_rows": 1},
        "train.csv, line 21",
    ),
    "bigrec-bad-timestamp": (
        lambda t: bigrec_case(t, ['1,"[1, 2]",later']),
        {"malformed_rows": 1},
        "train.csv, line 21",
    ),
    "bigrec-field-count": (
        lambda t: bigrec_case(t, ['1,"[1, 2]",5,extra']),
        {"malformed_rows": 1},
        "train.csv, line 21",
    ),
    "bigrec-empty-title": (
        lambda t: bigrec_case(t, names=title_json(**{"2": "  "})),
        {"empty_titles": 1, "untitled_item_interactions": -1},  # -1: some samples (checked below)
        "id2name.json",
    ),
    "bigrec-duplicate-sample": (
        lambda t: bigrec_case(t, [f'1,"[5, {NEW_ITEM}]",9000000'] * 2),
        {"duplicate_interactions": 1},
        "train.csv, line 22",
    ),
    "bigrec-duplicate-title-key": (
        lambda t: bigrec_case(t, names=title_json()[:-1] + ', "4": "Again"}'),
        {"duplicate_items": 1},
        "id2name.json",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_data_is_dropped_counted_and_warned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    build, expected, _ = CASES[name]
    spec = build(tmp_path)
    with caplog.at_level(logging.WARNING, logger="fairbench.data.issues"):
        data = load_dataset(spec, cache_dir=tmp_path / "cache")
    issues = {kind: entry["count"] for kind, entry in data.info["issues"].items()}
    for kind in ISSUE_KINDS:
        want = expected.get(kind, 0)
        assert (issues[kind] > 0) if want == -1 else (issues[kind] == want), (kind, issues)
    stats = dataset_stats(data)
    assert {kind: stats.flat[f"issues/{kind}"] for kind in ISSUE_KINDS} == issues
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == sum(1 for n in issues.values() if n)
    assert not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()
    if name == "bigrec-empty-title":
        assert "2" not in set(data.items["item_id"])  # the untitled item and its samples are gone
    if name == "ml1m-duplicate-interaction":  # dropped by the protocol, keeping the earliest copy
        assert data.info["counts"]["raw_interactions"] == 31 and data.info["counts"]["after_dedup"] == 30


@pytest.mark.parametrize("name", [n for n, case in CASES.items() if case[2]])
def test_strict_rejects_bad_data_naming_file_and_line(tmp_path: Path, name: str) -> None:
    build, _, where = CASES[name]
    spec = replace(build(tmp_path), strict=True)
    with pytest.raises(UserError, match=re.escape(where) + r"\b.*dataset\.strict=true"):
        load_dataset(spec, cache_dir=tmp_path / "cache")


def test_clean_data_passes_strict(tmp_path: Path) -> None:
    for spec in (ml1m_case(tmp_path), steam_case(tmp_path), amazon_case(tmp_path), bigrec_case(tmp_path)):
        data = load_dataset(replace(spec, strict=True), cache_dir=tmp_path / "cache")
        assert sum(entry["count"] for entry in data.info["issues"].values()) == 0


@pytest.mark.parametrize(
    "damage",
    ["empty", "binary", "header-only", "not-an-object"],
)
def test_garbage_files_end_in_a_user_error_not_a_traceback(tmp_path: Path, damage: str) -> None:
    junk = {"empty": b"", "binary": bytes(range(256)) * 4, "header-only": b"user_id,item_ids,timestamp\n"}
    junk["not-an-object"] = b"[1, 2, 3]\n"
    specs = [ml1m_case(tmp_path), steam_case(tmp_path), amazon_case(tmp_path), bigrec_case(tmp_path)]
    targets = [
        [tmp_path / "ml" / "ratings.dat", tmp_path / "ml" / "movies.dat"],
        [tmp_path / "steam" / "steam_reviews.json.gz", tmp_path / "steam" / "steam_games.json.gz"],
        [tmp_path / "amz" / "reviews_Books_5.json.gz", tmp_path / "amz" / "meta_Books.json.gz"],
        [tmp_path / "br" / "train.csv", tmp_path / "br" / "id2name.json"],
    ]
    for spec, paths in zip(specs, targets, strict=True):
        for path in paths:
            original = path.read_bytes()
            content = junk[damage]
            path.write_bytes(
                gzip.compress(content) if path.suffix == ".gz" and damage != "binary" else content
            )
            for strict in (False, True):
                with contextlib.suppress(UserError):  # any other exception fails the test
                    load_dataset(replace(spec, strict=strict), cache_dir=tmp_path / "cache")
            path.write_bytes(original)


def test_data_stats_command_shows_counts_and_strict_exits_with_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fairbench.cli import app

    write_ml1m(tmp_path / "data" / "ml-1m", ROWS, 10, extra_ratings="1::2::x::5\n1::99::4::5\nbad\n")
    monkeypatch.setenv("FAIRBENCH_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("FAIRBENCH_CACHE", str(tmp_path / "cache"))
    result = CliRunner().invoke(app, ["data", "stats", "dataset=ml1m"])
    assert result.exit_code == 0, result.output
    assert "bad data in the source files (dropped)" in result.output
    for kind, count in (
        ("malformed_rows", 1),
        ("non_numeric_ratings", 1),
        ("unknown_items", 1),
        ("empty_titles", 0),
    ):
        assert re.search(rf"{kind}\s+{count}\s", result.output), kind
    assert "ratings.dat, line 31: rating 'x' is not a number" in result.output
    strict = CliRunner().invoke(app, ["data", "stats", "dataset=ml1m", "dataset.strict=true"])
    assert strict.exit_code == 2 and isinstance(strict.exception, SystemExit)
    assert "Traceback" not in strict.output


def test_gzip_line_that_is_not_utf8_is_malformed(tmp_path: Path) -> None:
    spec = steam_case(tmp_path)
    path = tmp_path / "steam" / "steam_reviews.json.gz"
    content = gzip.decompress(path.read_bytes()) + b"{'username': '\xff\xfe', 'product_id': '1'}\n"
    path.write_bytes(gzip.compress(content))
    data = load_dataset(spec, cache_dir=tmp_path / "cache")
    assert data.info["issues"]["malformed_rows"]["first"].endswith("line 31: not valid UTF-8")
    write_gz_lines(path, ["{}"])  # a record without any field
    with pytest.raises(UserError, match="missing username, product_id, date"):
        load_dataset(replace(spec, strict=True), cache_dir=tmp_path / "cache")


def test_sequential_protocol_drops_duplicates_too(tmp_path: Path) -> None:
    spec = replace(ml1m_case(tmp_path, f"{U1}::{I1}::5::{T1 + 1}\n"), protocol=SequentialProtocol())
    data = load_dataset(spec, cache_dir=tmp_path / "cache")
    assert (
        data.info["counts"]["after_dedup"] == 30
        and data.info["issues"]["duplicate_interactions"]["count"] == 1
    )


def test_item_table_problems_of_items_nobody_uses_are_not_counted(tmp_path: Path) -> None:
    # like the Amazon meta files, which list every item of a category: unused rows never reach a catalogue
    movies = "11::  ::Drama\n12::Twelve (2000)::Drama\n12::Twelve again (2000)::Drama\n"
    data = load_dataset(replace(ml1m_case(tmp_path, movies=movies), strict=True), cache_dir=tmp_path / "c")
    assert sum(entry["count"] for entry in data.info["issues"].values()) == 0
    assert data.info["counts"]["raw_items"] == 11  # item 11 (untitled) and the second 12 are dropped
