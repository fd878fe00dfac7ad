"""Every dataset loader on small files in the real formats (tests/test_data_fixtures.py): what is read,
where files are expected, downloading, and `fairbench data stats dataset=<each>` on the fixtures."""

from __future__ import annotations

import gzip
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fairbench.data import (
    AmazonReviews,
    BigRecCSV,
    GeneralProtocol,
    MovieLens1M,
    SequentialProtocol,
    Steam,
    load_dataset,
)
from fairbench.data.checks import clean_raw
from fairbench.errors import UserError
from tests.helpers.data_files import (
    amazon_meta,
    bigrec_samples,
    interaction_rows,
    sequences,
    steam_game,
    write_amazon,
    write_bigrec,
    write_ml1m,
    write_steam,
)

SEQS = sequences(6, 10, 5)
ROWS = interaction_rows(SEQS)
ALL_USERS = {(u, i) for u, items, _ in SEQS for i in items}
LOOSE = GeneralProtocol(min_user_interactions=1, min_rating=None)


def read(spec, data_dir: Path | None = None):
    """What a loader reads, after the shared bad-data checks (no protocol)."""
    return clean_raw(spec.read(spec.locate(cache_dir=data_dir or Path("/nonexistent"), data_dir=data_dir)))


# ----------------------------------------------------------------------------------------------- MovieLens-1M


def test_ml1m_reads_latin1_titles_with_years_and_genres(tmp_path: Path) -> None:
    folder = write_ml1m(tmp_path / "ml-1m", ROWS, 10)
    raw = read(MovieLens1M(path=str(folder)))
    frame = raw.interactions
    assert len(frame) == len(ROWS) == 30
    assert set(zip(frame["user_id"], frame["item_id"], strict=True)) == ALL_USERS
    assert frame["rating"].eq(4.0).all() and frame["timestamp"].tolist() == [float(r[3]) for r in ROWS]
    items = raw.items.set_index("item_id")
    assert items.loc["3", "title"] == "Café au Lait (1993)" and items.loc["3", "year"] == 1993  # latin-1
    assert items.loc["1", "title"] == "Movie 1 (1981)" and items.loc["1", "genres"] == ["Comedy", "Horror"]
    assert len(items) == 10 and raw.issues.total == 0


def test_ml1m_default_location_is_under_data_dir(tmp_path: Path) -> None:
    write_ml1m(tmp_path / "data" / "ml-1m", ROWS, 10)
    spec = MovieLens1M(path="ml-1m", protocol=SequentialProtocol())
    data = load_dataset(spec, cache_dir=tmp_path / "cache", data_dir=tmp_path / "data")
    assert data.items.set_index("item_id").loc["3", "title"] == "Café au Lait (1993)"
    assert data.info["source"].endswith(str(tmp_path / "data" / "ml-1m"))


# ------------------------------------------------------------------------------------------------------ Steam


def test_steam_reads_python_literal_lines(tmp_path: Path) -> None:
    games = [steam_game(i) for i in range(1, 11)]
    del games[1]["genres"]  # game 2: genres from its tags
    del games[2]["app_name"]  # game 3: title from "title"
    games[3]["app_name"] = "Rock &amp; Roll"  # HTML entity
    del games[4]["release_date"]
    folder = write_steam(tmp_path / "steam", SEQS, 10, games=games)
    raw = read(Steam(path=str(folder)))
    frame = raw.interactions
    assert set(zip(frame["user_id"], frame["item_id"], strict=True)) == {
        (f"player {u}", i) for u, i in ALL_USERS
    }
    assert frame["rating"].isna().all()
    # time = the review date at 00:00 UTC
    first = pd.Timestamp(ROWS[0][3] * 60, unit="s", tz="UTC").normalize()
    assert frame["timestamp"].iloc[0] == first.timestamp()
    items = raw.items.set_index("item_id")
    assert items.loc["1", "genres"] == ["Comedy", "Indie"] and items.loc["2", "genres"] == [
        "Strategy",
        "Indie",
    ]
    assert items.loc["3", "title"] == "Game 3 & Friends" and items.loc["4", "title"] == "Rock & Roll"
    assert items.loc["1", "year"] == 2001 and pd.isna(items.loc["5", "year"])
    assert raw.issues.total == 0


# ----------------------------------------------------------------------------------------------------- Amazon


@pytest.mark.parametrize("release", [2014, 2018])
def test_amazon_reads_both_releases(tmp_path: Path, release: int) -> None:
    folder = write_amazon(tmp_path / "amazon", "Books", release, ROWS, 10)
    raw = read(AmazonReviews(category="Books", path=str(folder)))
    assert f"Amazon {release} Books" in raw.source
    frame = raw.interactions
    expected = {(f"A{u}X", f"B{int(i):09d}") for u, i in ALL_USERS}
    assert set(zip(frame["user_id"], frame["item_id"], strict=True)) == expected
    assert frame["rating"].eq(4.0).all() and frame["timestamp"].tolist() == [float(r[3]) for r in ROWS]
    items = raw.items.set_index("item_id")
    assert items.loc["B000000001", "title"] == "Book 1 & More"  # "&amp;" unescaped
    assert items.loc["B000000001", "genres"][0] == "Children's Books"  # "&#39;" unescaped


def test_amazon_genre_depth(tmp_path: Path) -> None:
    for release in (2014, 2018):
        folder = write_amazon(tmp_path / str(release), "Books", release, ROWS, 10)
        genres = {
            depth: read(AmazonReviews(category="Books", path=str(folder), genre_depth=depth)).items["genres"]
            for depth in (0, 1, 2, 3)
        }
        assert genres[0].tolist() == [["Books"]] * 10  # the top level is the category itself
        second = "Kindle" if release == 2014 else None  # 2014 items have two category paths
        assert genres[1].iloc[0] == [g for g in ("Children's Books", second) if g]
        assert genres[2].iloc[0] == ["Classics" if release == 2014 else "Genre Fiction"]
        assert genres[3].tolist() == [[]] * 10


def test_amazon_release_detection_and_category(tmp_path: Path) -> None:
    folder = tmp_path / "amazon"
    write_amazon(folder, "Books", 2014, ROWS, 10)
    write_amazon(folder, "Video_Games", 2018, ROWS, 10)
    assert "2018 Video_Games" in read(AmazonReviews(category="Video_Games", path=str(folder))).source
    write_amazon(folder, "Books", 2018, ROWS, 10)  # now both releases of Books
    with pytest.raises(UserError, match="both the 2014 and the 2018 release.*dataset.release"):
        read(AmazonReviews(category="Books", path=str(folder)))
    assert "2014" in read(AmazonReviews(category="Books", path=str(folder), release=2014)).source
    with pytest.raises(UserError, match="dataset.category=None"):
        read(AmazonReviews(path=str(folder)))
    with pytest.raises(UserError, match="genre_depth"):
        read(AmazonReviews(category="Books", path=str(folder), genre_depth=-1))


def test_uncompressed_copies_are_read_too(tmp_path: Path) -> None:
    folder = write_amazon(tmp_path / "amazon", "Books", 2018, ROWS, 10)
    for name in ("Books_5.json.gz", "meta_Books.json.gz"):
        (folder / name.removesuffix(".gz")).write_bytes(gzip.decompress((folder / name).read_bytes()))
        (folder / name).unlink()
    raw = read(AmazonReviews(category="Books", path=str(folder)))
    assert len(raw.interactions) == 30 and len(raw.items) == 10


# ------------------------------------------------------------------------------------------------- BIGRec CSV


@pytest.mark.parametrize("titles", ["json", "txt"])
def test_bigrec_csv_keeps_samples_and_titles(tmp_path: Path, titles: str) -> None:
    samples = bigrec_samples(SEQS)
    cuts = write_bigrec(tmp_path / "br", samples, 10, titles=titles)
    raw = read(BigRecCSV(path=str(tmp_path / "br")))
    got = raw.samples
    assert len(got) == len(samples) == 24
    for code, split in enumerate(("train", "valid", "test")):
        rows = np.flatnonzero(got.split == code)
        listed = [
            (
                got.user_id[r],
                [int(i) for i in got.item_ids[got.indptr[r] : got.indptr[r + 1]]],
                got.timestamp[r],
            )
            for r in rows
        ]
        assert listed == [(u, ids, float(t)) for u, ids, t in cuts[split]]
        assert got.line[rows].tolist() == list(range(2, len(rows) + 2))
    items = raw.items.set_index("item_id")
    assert items.loc["3", "title"] == "Café au Lait (1993)" and items.loc["3", "genres"] == []
    # the interactions a general protocol re-splits: every (user, item) the samples name, in time order
    frame = raw.interactions
    assert set(zip(frame["user_id"], frame["item_id"], strict=True)) == ALL_USERS
    first = frame[(frame["user_id"] == "1")].sort_values("timestamp")["item_id"].tolist()
    assert first == SEQS[0][1]


def test_bigrec_title_file_choice(tmp_path: Path) -> None:
    write_bigrec(tmp_path / "br", bigrec_samples(SEQS), 10)
    (tmp_path / "br" / "id2name_extra.json").write_text("{}")
    with pytest.raises(UserError, match="several item-title files"):
        read(BigRecCSV(path=str(tmp_path / "br")))
    for name in ("id2name_extra.json", "id2name.json"):
        (tmp_path / "br" / name).unlink()
    with pytest.raises(UserError, match=r"missing id2name\.json or id2name\.txt"):
        read(BigRecCSV(path=str(tmp_path / "br")))


# -------------------------------------------------------------------------------- missing files, downloading


@pytest.mark.parametrize(
    ("spec", "names", "url"),
    [
        (
            MovieLens1M(),
            ["ratings.dat", "movies.dat"],
            "https://files.grouplens.org/datasets/movielens/ml-1m.zip",
        ),
        (Steam(), ["steam_reviews.json.gz", "steam_games.json.gz"], "https://cseweb.ucsd.edu/~wckang/"),
        (AmazonReviews(category="Books"), ["reviews_Books_5.json.gz", "Books_5.json.gz", "meta_Books"], None),
        (BigRecCSV(), ["train.csv", "test.csv"], None),
    ],
)
def test_missing_files_say_what_to_download_and_where(tmp_path: Path, spec, names, url) -> None:
    if url is not None:
        spec.urls = [url]
    with pytest.raises(UserError) as err:
        load_dataset(spec, cache_dir=tmp_path / "cache", data_dir=tmp_path / "data")
    message = str(err.value)
    assert str(tmp_path / "data" / spec.default_folder) in message and "paths.data_dir" in message
    for name in names:
        assert name in message
    assert "dataset.path" in message
    if url is not None:
        assert url in message and "dataset.download=true" in message


def test_download_fetches_a_zip_and_plain_files(tmp_path: Path) -> None:
    source = write_ml1m(tmp_path / "src" / "ml-1m", ROWS, 10)
    archive = tmp_path / "ml-1m.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for name in ("ratings.dat", "movies.dat", "README"):
            (source / name).touch()
            bundle.write(source / name, f"ml-1m/{name}")
    spec = MovieLens1M(path="ml-1m", download=True, urls=[archive.as_uri()])
    data = load_dataset(spec, cache_dir=tmp_path / "cache", data_dir=tmp_path / "data")
    assert sorted(p.name for p in (tmp_path / "data" / "ml-1m").iterdir()) == ["movies.dat", "ratings.dat"]
    assert data.n_users == 6

    steam_src = write_steam(tmp_path / "steam-src", SEQS, 10)
    urls = [(steam_src / name).as_uri() for name in ("steam_reviews.json.gz", "steam_games.json.gz")]
    spec = Steam(path=str(tmp_path / "steam"), download=True, urls=urls)
    assert load_dataset(spec, cache_dir=tmp_path / "cache").n_items == len({i for _, i in ALL_USERS})

    broken = Steam(path=str(tmp_path / "nothing"), download=True, urls=[(tmp_path / "no.json.gz").as_uri()])
    with pytest.raises(UserError, match="downloading failed"):
        load_dataset(broken, cache_dir=tmp_path / "cache")


def test_amazon_urls_are_filled_with_the_category(tmp_path: Path) -> None:
    source = write_amazon(tmp_path / "src", "Video_Games", 2018, ROWS, 10)
    template = [f"{source.as_uri()}/{{category}}_5.json.gz", f"{source.as_uri()}/meta_{{category}}.json.gz"]
    spec = AmazonReviews(
        category="Video_Games", path=str(tmp_path / "amazon"), download=True, urls=template, protocol=LOOSE
    )
    data = load_dataset(spec, cache_dir=tmp_path / "cache")
    assert data.n_users == 6 and (tmp_path / "amazon" / "Video_Games_5.json.gz").is_file()


def test_a_damaged_gzip_file_is_a_user_error(tmp_path: Path) -> None:
    folder = write_steam(tmp_path / "steam", sequences(40, 10, 8), 10)
    path = folder / "steam_reviews.json.gz"
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(UserError, match=re.escape(str(path)) + ".*damaged or truncated"):
        load_dataset(Steam(path=str(folder)), cache_dir=tmp_path / "cache")


# ----------------------------------------------------------------------------- `fairbench data stats` on each


def write_all_fixtures(data_dir: Path) -> None:
    """Every dataset's files under their default folders; 12 users x 24 interactions (general: >= 20)."""
    seqs = sequences(12, 40, 24)
    rows = interaction_rows(seqs)
    write_ml1m(data_dir / "ml-1m", rows, 40)
    write_steam(data_dir / "steam", seqs, 40)
    for category in ("Books", "Movies_and_TV", "Video_Games", "Electronics"):
        write_amazon(data_dir / "amazon", category, 2018, rows, 40)
    write_bigrec(data_dir / "bigrec_csv", bigrec_samples(seqs), 40)


@pytest.mark.parametrize(
    ("args", "general"),
    [
        (["dataset=ml1m"], False),
        (["dataset=ml1m", "dataset/protocol=general"], True),
        (["dataset=steam"], False),
        (["dataset=books"], True),
        (["dataset=movies", "dataset/protocol=sequential"], False),
        (["dataset=games"], True),
        (["dataset=amazon", "dataset.category=Electronics"], True),
        (["dataset=bigrec_csv"], False),
        (["dataset=bigrec_csv", "dataset/protocol=general"], True),
    ],
)
def test_data_stats_command_on_every_dataset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], general: bool
) -> None:
    from fairbench.cli import app

    write_all_fixtures(tmp_path / "data")
    monkeypatch.setenv("FAIRBENCH_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("FAIRBENCH_CACHE", str(tmp_path / "cache"))
    result = CliRunner().invoke(app, ["data", "stats", *args])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "sequential samples" in out and "bad data in the source files (none)" in out
    for kind in (
        "malformed_rows",
        "non_numeric_ratings",
        "unknown_items",
        "empty_titles",
        "duplicate_interactions",
    ):
        assert re.search(rf"{kind}\s+0", out), kind
    table = out.split("\n\n")[1].splitlines()
    assert table[0].split() == ["users", "items", "interactions", "density"]
    if general:  # 12 users with 24 interactions each: all kept, each with 9 / 7 / 8 train / valid / test
        assert table[1].split()[:2] == ["train", "12"] and table[1].split()[3] == str(12 * 9)
    else:  # global temporal 8:1:1 of the 12 x 23 samples
        assert re.search(r"train samples before sub-sampling\s+220\n", out)  # floor(0.8 x 276)
    if args[0] != "dataset=bigrec_csv":
        assert "item groups: genre" in out


def test_titles_in_the_item_table_are_what_a_prompt_needs(tmp_path: Path) -> None:
    write_all_fixtures(tmp_path / "data")
    data = load_dataset(MovieLens1M(), cache_dir=tmp_path / "cache", data_dir=tmp_path / "data")
    titles = data.items["title"]
    assert titles.str.fullmatch(r".+ \(\d{4}\)").all()  # MovieLens titles with year
    meta = json.loads(json.dumps(amazon_meta(1, 2018)))
    assert meta["title"] == "Book 1 &amp; More"  # the raw file really has the entity...
    books = load_dataset(
        AmazonReviews(category="Books", protocol=LOOSE),
        cache_dir=tmp_path / "cache",
        data_dir=tmp_path / "data",
    )
    assert not books.items["title"].str.contains("&amp;").any()  # ...and the item table does not


def test_every_dataset_yaml_documents_every_key() -> None:
    conf = Path(__file__).resolve().parents[1] / "fairbench" / "conf" / "dataset"
    files = sorted(conf.glob("*.yaml")) + sorted((conf / "protocol").glob("*.yaml"))
    assert {p.stem for p in files} >= {"ml1m", "steam", "books", "movies", "games", "amazon", "bigrec_csv"}
    for path in files:
        lines = path.read_text().splitlines()
        for index, line in enumerate(lines):
            if re.match(r"\s*[A-Za-z_]+:", line) and not line.lstrip().startswith("_target_"):
                assert "#" in line or lines[index - 1].lstrip().startswith("#"), f"{path.name}: {line}"


@pytest.mark.slow
def test_alpharec_trains_on_bigrec_csv_end_to_end(tmp_path: Path) -> None:
    """`fairbench train dataset=bigrec_csv dataset.path=<dir>` on 12 users x 24 items (276 samples, their
    split kept by the default sequential protocol). No genres in the format: metric.group_kinds=[pop]."""
    import os
    import subprocess
    import sys

    write_bigrec(tmp_path / "data", bigrec_samples(sequences(12, 40, 24)), 40)
    env = os.environ | {
        "FAIRBENCH_OUTPUTS": str(tmp_path / "out"),
        "FAIRBENCH_CACHE": str(tmp_path / "cache"),
        "HYDRA_FULL_ERROR": "0",
    }
    args = [str(Path(sys.executable).parent / "fairbench"), "train", "dataset=bigrec_csv"]
    args += [f"dataset.path={tmp_path / 'data'}", "trainer.max_epochs=1", "trainer.progress=false"]
    args += ["logger=none", "metric.group_kinds=[pop]"]
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (metrics_file,) = (tmp_path / "out").glob("runs/*/*/metrics.json")
    metrics = json.loads(metrics_file.read_text())
    assert 0 <= metrics["test/recall@20"] <= 1 and 0 <= metrics["valid/recall@20"] <= 1
    assert metrics["test/pop/cv@20"] >= 0
    assert "bigrec_csv: 12 users, 40 items" in result.stderr + result.stdout
