"""Tests of fairbench.data: MovieLens-100K loading, the general protocol, item groups, cache, stats, config.

The real MovieLens-100K is fetched once per session (recbole wheel via pip) into $FAIRBENCH_CACHE when set,
else into a temporary folder. Hand-computed expectations use a tiny fixture written by the tests.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from omegaconf import OmegaConf

from fairbench.data import (
    GeneralProtocol,
    GenreGroups,
    GroupsSpec,
    InteractionData,
    MovieLens100K,
    PopularityGroups,
    build_item_groups,
    dataset_stats,
    load_dataset,
)
from fairbench.data.cache import META_FILE, SPLITS_FILE, sha256_file
from fairbench.data.fetch import (
    RECBOLE_ML100K_SHA256,
    RECBOLE_VERSION,
    ensure_ml100k,
    fetch_from_grouplens,
    fetch_from_recbole_wheel,
)
from fairbench.data.movielens import ML100K_GENRES
from fairbench.data.protocols import natural_sorted_ids, split_bounds
from fairbench.errors import UserError

YAML_PATH = Path(__file__).resolve().parents[1] / "fairbench" / "conf" / "dataset" / "ml100k.yaml"
_NODE: list = []


def ml100k_node():
    """The shipped ``dataset=ml100k`` node as Hydra composes it (protocol from dataset/protocol/)."""
    if not _NODE:
        from fairbench.config import compose_config

        _NODE.append(compose_config(["dataset=ml100k"]).dataset)
    node = OmegaConf.create(OmegaConf.to_container(_NODE[0]))
    return node


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = os.environ.get("FAIRBENCH_CACHE")
    return Path(env).expanduser() if env else tmp_path_factory.mktemp("fairbench-cache")


@pytest.fixture(scope="session")
def ml100k_dir(cache_root: Path) -> Path:
    return fetch_from_recbole_wheel(cache_root)


@pytest.fixture(scope="session")
def ml100k(cache_root: Path, ml100k_dir: Path) -> InteractionData:
    return load_dataset(ml100k_node(), cache_dir=cache_root)


@pytest.fixture(scope="session")
def ml100k_filtered(ml100k_dir: Path) -> pd.DataFrame:
    """Reference for the protocol's steps 1-3, computed directly with pandas from the raw file."""
    raw = pd.read_csv(ml100k_dir / "ml-100k.inter", sep="\t")
    raw.columns = ["user", "item", "rating", "timestamp"]
    kept = raw[raw["rating"] >= 3]
    sizes = kept.groupby("user")["item"].transform("size")
    return kept[sizes >= 20].astype({"user": str, "item": str})


# Tiny dataset (hand-computed below). Users: "1" rates items 1..10 with item 10 oldest; "2" rates 10 items at
# one timestamp (ties broken by natural item id: 1, 2, 3, 4, 5, 8, 9, 10, 11, 12); "3" has only 3 ratings
# (dropped by min_user_interactions=5); "4" has a rating 2 (dropped) and a duplicate of item 7 (the earliest,
# t=299, is kept).
TINY_INTERACTIONS = (
    [("1", str(i), 4.0, 100.0 + 10 - i) for i in range(1, 11)]
    + [("2", str(i), 5.0, 200.0) for i in (10, 2, 1, 3, 5, 8, 9, 4, 11, 12)]
    + [("3", str(i), 5.0, 150.0) for i in (1, 2, 3)]
    + [("4", "1", 5.0, 300.0), ("4", "2", 5.0, 301.0), ("4", "6", 2.0, 302.0), ("4", "7", 4.0, 303.0)]
    + [("4", "7", 5.0, 299.0), ("4", "8", 3.0, 304.0), ("4", "9", 3.0, 305.0)]
)
TINY_ITEMS = [  # item_id, title, year, genres; item 13 has no interactions
    (str(i), f"Movie {i}", 1990 + i, ["Comedy"] if i % 2 else ["Drama", "Romance"]) for i in range(1, 14)
]
TINY_ITEMS[6] = ("7", "Café au Lait", 1993, [])  # no genre ("unknown"), latin-1 title
TINY_ITEMS[2] = ("3", "Three", 1993, ["Action", "Comedy", "Sci-Fi"])
TINY_PROTOCOL = {
    "min_rating": 3.0,
    "min_user_interactions": 5,
    "ratios": [0.4, 0.3, 0.3],
    "order": "temporal",
}
# Temporal split: catalogue = train items {1, 2, 3, 4, 7, 8, 9, 10} -> internal 0..7; users 1 2 4 -> 0 1 2.
TINY_EXPECTED = {
    "train": {0: [7, 6, 5, 4], 1: [0, 1, 2, 3], 2: [4, 0]},  # u1: 10 9 8 7; u2: 1 2 3 4; u4: 7 1
    "valid": {0: [3], 1: [5, 6], 2: [1]},  # u1: 6 5 4 -> 4; u2: 5 8 9 -> 8 9; u4: 2
    "test": {0: [2, 1, 0], 1: [7], 2: [5, 6]},  # u1: 3 2 1; u2: 10 11 12 -> 10; u4: 8 9
}


def write_recbole(folder: Path, interactions: list[tuple], items: list[tuple]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    lines += [f"{u}\t{i}\t{r:g}\t{t:.0f}" for u, i, r, t in interactions]
    (folder / "ml-100k.inter").write_text("\n".join(lines) + "\n", encoding="utf-8")
    lines = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
    lines += [f"{i}\t{title}\t{year}\t{' '.join(g) or 'unknown'}" for i, title, year, g in items]
    (folder / "ml-100k.item").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def write_grouplens(folder: Path, interactions: list[tuple], items: list[tuple]) -> Path:
    """u.data / u.item as GroupLens writes them: the title carries "(year)", latin-1, 19 genre flags."""
    folder.mkdir(parents=True, exist_ok=True)
    data = [f"{u}\t{i}\t{r:g}\t{t:.0f}" for u, i, r, t in interactions]
    (folder / "u.data").write_text("\n".join(data) + "\n", encoding="latin-1")
    lines = []
    for i, title, year, genres in items:
        full_title = f"{title} ({year})" if str(year) not in ("", "unkonwn") else title
        flags = [int(g in genres) for g in ML100K_GENRES]
        flags[0] = int(not genres)
        lines.append("|".join([i, full_title, "01-Jan-1995", "", "http://x"] + [str(f) for f in flags]))
    (folder / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    return folder


def tiny_spec(path: Path, **protocol: object) -> MovieLens100K:
    return MovieLens100K(name="tiny", path=str(path), protocol=GeneralProtocol(**(TINY_PROTOCOL | protocol)))


def as_sets(matrix: sp.csr_matrix) -> dict[int, list[int]]:
    return {
        u: sorted(matrix.indices[matrix.indptr[u] : matrix.indptr[u + 1]].tolist())
        for u in range(matrix.shape[0])
    }


def id_pairs(data: InteractionData, split: str) -> set[tuple[str, str]]:
    """(original user id, original item id) pairs of a split."""
    matrix = data.split(split).tocoo()
    items = data.items["item_id"].to_numpy()
    return set(zip(data.user_ids[matrix.row].tolist(), items[matrix.col].tolist(), strict=True))


def data_from_counts(counts: list[int], genres: list[list[str]]) -> InteractionData:
    """Items with the given training counts (user u interacts with item i iff u < counts[i])."""
    n_users, n_items = max(counts), len(counts)
    dense = (np.arange(n_users)[:, None] < np.asarray(counts)[None, :]).astype(np.float32)
    empty = sp.csr_matrix((n_users, n_items), dtype=np.float32)
    items = pd.DataFrame({"item_id": [str(i) for i in range(n_items)], "title": "t", "genres": genres})
    return InteractionData("hand", np.arange(n_users).astype(str), items, sp.csr_matrix(dense), empty, empty)


# ----------------------------------------------------------------------------------- real MovieLens-100K


def test_fetched_files_are_the_pinned_recbole_copy(ml100k_dir: Path) -> None:
    for name, digest in RECBOLE_ML100K_SHA256[RECBOLE_VERSION].items():
        assert sha256_file(ml100k_dir / name) == digest
    lines = (ml100k_dir / "ml-100k.inter").read_text().splitlines()
    assert lines[0].split("\t") == ["user_id:token", "item_id:token", "rating:float", "timestamp:float"]
    assert len(lines) == 100_001


def test_ml100k_counts_after_protocol(ml100k: InteractionData, ml100k_filtered: pd.DataFrame) -> None:
    counts = ml100k.info["counts"]
    # GroupLens README: 100,000 ratings by 943 users on 1,682 movies; 82,520 ratings are >= 3.
    assert (counts["raw_interactions"], counts["raw_users"], counts["raw_items"]) == (100_000, 943, 1_682)
    assert counts["after_min_rating"] == counts["after_dedup"] == 82_520
    assert counts["after_user_filter"] == len(ml100k_filtered) == 80_962
    assert ml100k.n_users == ml100k_filtered["user"].nunique() == 845
    assert ml100k.user_ids.tolist() == sorted(ml100k_filtered["user"].unique(), key=int)
    total = ml100k.train.nnz + ml100k.valid.nnz + ml100k.test.nnz
    assert total + counts["removed_valid"] + counts["removed_test"] == 80_962
    # split seed 0 (regression values; the invariants are checked in the tests below)
    assert (ml100k.n_items, ml100k.train.nnz, ml100k.valid.nnz, ml100k.test.nnz) == (
        1_433,
        32_056,
        24_126,
        24_533,
    )


def test_ml100k_item_table(ml100k: InteractionData) -> None:
    items = ml100k.items.set_index("item_id")
    assert list(ml100k.items.columns[:3]) == ["item_id", "title", "genres"]
    assert (
        items.loc["1", "title"] == "Toy Story" and items.loc["1", "year"] == 1995
    )  # RecBole: no year in title
    assert items.loc["1", "genres"] == ["Animation", "Children's", "Comedy"]
    assert items.loc["50", "genres"] == ["Action", "Adventure", "Romance", "Sci-Fi", "War"]
    assert items.loc["267", "genres"] == [] and pd.isna(items.loc["267", "year"])  # "unknown" genre -> none
    genres = set(ml100k.items["genres"].explode().dropna())
    assert genres == set(ML100K_GENRES) - {"unknown"}
    assert ml100k.items["item_id"].astype(int).is_monotonic_increasing  # internal order = numeric id order


def test_ml100k_split_follows_protocol(ml100k: InteractionData, ml100k_filtered: pd.DataFrame) -> None:
    n = ml100k_filtered.groupby("user").size().loc[ml100k.user_ids].to_numpy()
    train_n = np.diff(ml100k.train.indptr)
    valid_n, test_n = np.diff(ml100k.valid.indptr), np.diff(ml100k.test.indptr)
    # train never loses items, so its size is exactly floor(0.4 n); valid/test lose only cold items
    np.testing.assert_array_equal(train_n, np.floor(0.4 * n + 1e-9))
    assert np.all(valid_n <= np.floor(0.7 * n + 1e-9) - train_n)
    assert np.all(test_n <= n - np.floor(0.7 * n + 1e-9))
    assert train_n.min() >= 8  # n >= 20
    # every split item is in the raw history of its user; what is missing is exactly the non-catalogue items
    catalogue = set(ml100k.items["item_id"])
    history = ml100k_filtered.groupby("user")["item"].agg(set)
    item_ids = ml100k.items["item_id"].to_numpy()
    for u in (0, 100, 844):
        kept = set()
        for split in ("train", "valid", "test"):
            kept |= set(item_ids[as_sets(ml100k.split(split))[u]])
        assert kept == history[ml100k.user_ids[u]] & catalogue


def test_ml100k_splits_disjoint_binary_and_warm(ml100k: InteractionData) -> None:
    for a, b in (("train", "valid"), ("train", "test"), ("valid", "test")):
        assert ml100k.split(a).multiply(ml100k.split(b)).nnz == 0
    for split in ("train", "valid", "test"):
        matrix = ml100k.split(split)
        assert matrix.dtype == np.float32 and np.all(matrix.data == 1) and matrix.has_sorted_indices
        assert matrix.shape == (845, 1_433)
    assert ml100k.train_counts().min() >= 1  # catalogue = train items, so every valid/test item is in train
    assert ml100k.train_counts().sum() == ml100k.train.nnz


def test_random_split_deterministic_per_seed(
    cache_root: Path, ml100k: InteractionData, tmp_path: Path
) -> None:
    again = load_dataset(MovieLens100K(), cache_dir=cache_root, rebuild=True)
    for split in ("train", "valid", "test"):
        assert (again.split(split) != ml100k.split(split)).nnz == 0
    other = load_dataset(MovieLens100K(protocol=GeneralProtocol(seed=1)), cache_dir=cache_root)
    assert other.info["cache_dir"] != ml100k.info["cache_dir"]
    assert other.train.nnz == ml100k.train.nnz  # floor(0.4 n) per user, whatever the seed
    shared = len(id_pairs(other, "train") & id_pairs(ml100k, "train"))
    assert shared < 0.6 * ml100k.train.nnz  # two random 40% samples overlap by about 40%


def test_temporal_split_respects_time(cache_root: Path) -> None:
    data = load_dataset(MovieLens100K(protocol=GeneralProtocol(order="temporal")), cache_dir=cache_root)
    frame = {}
    for split in ("train", "valid", "test"):
        matrix = data.split(split)
        users = np.repeat(np.arange(data.n_users), np.diff(matrix.indptr))
        frame[split] = pd.Series(getattr(data, f"{split}_timestamps")).groupby(users)
    assert np.all(frame["train"].max() <= frame["valid"].min().reindex(range(845)).fillna(np.inf))
    assert np.all(frame["valid"].max() <= frame["test"].min().reindex(range(845)).fillna(np.inf))
    assert np.all(frame["train"].max() <= frame["test"].min().reindex(range(845)).fillna(np.inf))


# ------------------------------------------------------------------------------------- tiny, by hand


def test_split_bounds_by_hand() -> None:
    sizes = np.array([1, 2, 3, 10, 20, 21, 22, 23])
    train_end, valid_end = split_bounds(sizes, (0.4, 0.3, 0.3))
    assert train_end.tolist() == [1, 1, 1, 4, 8, 8, 8, 9]
    assert valid_end.tolist() == [1, 1, 2, 7, 14, 14, 15, 16]
    # 0.7 + 0.2 = 0.8999999999999999 in floats; the boundary for n = 10 must still be 9
    assert split_bounds(np.array([10]), (0.7, 0.2, 0.1))[1].tolist() == [9]


def test_natural_id_order() -> None:
    assert natural_sorted_ids(np.array(["10", "2", "1", "2"])).tolist() == ["1", "2", "10"]
    assert natural_sorted_ids(np.array(["b", "10", "a"])).tolist() == ["10", "a", "b"]


def test_tiny_temporal_split_by_hand(tmp_path: Path) -> None:
    folder = write_recbole(tmp_path / "rb", TINY_INTERACTIONS, TINY_ITEMS)
    data = load_dataset(tiny_spec(folder), cache_dir=tmp_path / "cache")
    assert data.user_ids.tolist() == ["1", "2", "4"]
    assert data.items["item_id"].tolist() == ["1", "2", "3", "4", "7", "8", "9", "10"]
    for split, expected in TINY_EXPECTED.items():
        assert as_sets(data.split(split)) == {u: sorted(v) for u, v in expected.items()}
    counts = data.info["counts"]
    assert (counts["after_min_rating"], counts["after_dedup"], counts["after_user_filter"]) == (29, 28, 25)
    assert (counts["removed_valid"], counts["removed_test"]) == (3, 2)
    # the duplicate of (user 4, item 7) keeps the earliest timestamp
    row = data.train.indptr[2] + list(data.train.indices[data.train.indptr[2] : data.train.indptr[3]]).index(
        4
    )
    assert data.train_timestamps[row] == 299.0


def test_tiny_random_split_proportions(tmp_path: Path) -> None:
    folder = write_recbole(tmp_path / "rb", TINY_INTERACTIONS, TINY_ITEMS)
    splits = []
    for seed in range(6):
        data = load_dataset(tiny_spec(folder, order="random", seed=seed), cache_dir=tmp_path / "cache")
        assert np.diff(data.train.indptr).tolist() == [4, 4, 2]  # floor(0.4 * [10, 10, 5])
        total = data.train + data.valid + data.test
        assert total.max() == 1  # disjoint
        assert np.diff(data.valid.indptr).max() <= 3 and np.diff(data.test.indptr).max() <= 3
        splits.append(tuple(data.items["item_id"]) + tuple(data.train.indices))
    assert len(set(splits)) > 1  # different seeds, different splits


def test_grouplens_and_recbole_formats_agree(tmp_path: Path) -> None:
    rb_folder = write_recbole(tmp_path / "rb", TINY_INTERACTIONS, TINY_ITEMS)
    gl_folder = write_grouplens(tmp_path / "gl", TINY_INTERACTIONS[::-1], TINY_ITEMS)  # other row order too
    assert "Café".encode("latin-1") in (gl_folder / "u.item").read_bytes()
    for order in ("temporal", "random"):
        rb = load_dataset(tiny_spec(rb_folder, order=order), cache_dir=tmp_path)
        gl = load_dataset(tiny_spec(gl_folder, order=order), cache_dir=tmp_path)
        assert gl.info["source"].startswith("GroupLens") and rb.info["source"].startswith("RecBole")
        assert gl.user_ids.tolist() == rb.user_ids.tolist()
        assert gl.items["item_id"].tolist() == rb.items["item_id"].tolist()
        for split in ("train", "valid", "test"):
            assert (gl.split(split) != rb.split(split)).nnz == 0
    gl_items, rb_items = gl.items.set_index("item_id"), rb.items.set_index("item_id")
    assert gl_items.loc["1", "title"] == "Movie 1 (1991)" and rb_items.loc["1", "title"] == "Movie 1"
    assert gl_items["genres"].tolist() == rb_items["genres"].tolist()
    assert gl_items["year"].tolist() == rb_items["year"].tolist()
    temporal = load_dataset(tiny_spec(gl_folder), cache_dir=tmp_path).items.set_index("item_id")
    assert temporal.loc["7", "title"] == "Café au Lait (1993)" and temporal.loc["7", "genres"] == []
    assert temporal.loc["3", "genres"] == ["Action", "Comedy", "Sci-Fi"] and temporal.loc["3", "year"] == 1993


def test_missing_path_or_files_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=re.escape(str(tmp_path / "nowhere"))):
        load_dataset(MovieLens100K(path="nowhere"), cache_dir=tmp_path, data_dir=tmp_path)
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "u.data").write_text("1\t1\t5\t1\n")
    with pytest.raises(UserError, match=r"u\.data \+ u\.item") as err:
        load_dataset(MovieLens100K(path=str(tmp_path / "half")), cache_dir=tmp_path)
    assert "ml-100k.inter + ml-100k.item" in str(err.value)


def test_malformed_row_is_dropped_or_with_strict_a_user_error(tmp_path: Path) -> None:
    folder = write_recbole(tmp_path / "rb", TINY_INTERACTIONS, TINY_ITEMS)
    text = (folder / "ml-100k.inter").read_text().replace("\t4\t", "\tfour\t", 1)
    (folder / "ml-100k.inter").write_text(text)
    strict = MovieLens100K(
        name="tiny", path=str(folder), strict=True, protocol=GeneralProtocol(**TINY_PROTOCOL)
    )
    with pytest.raises(UserError, match=r"ml-100k\.inter, line 2: rating 'four' is not a number"):
        load_dataset(strict, cache_dir=tmp_path)
    data = load_dataset(tiny_spec(folder), cache_dir=tmp_path)  # default: dropped and counted
    assert data.info["issues"]["non_numeric_ratings"]["count"] == 1
    assert data.info["counts"]["raw_interactions"] == len(TINY_INTERACTIONS) - 1


def test_bad_protocol_values_are_user_errors(tmp_path: Path) -> None:
    node = ml100k_node()
    node.protocol.ratios = [0.5, 0.5, 0.5]
    with pytest.raises(UserError, match="ratios"):
        load_dataset(node, cache_dir=tmp_path)
    with pytest.raises(UserError, match="exactly one of top_fraction"):
        PopularityGroups(top_fraction=0.1, n_quantiles=5)
    node = ml100k_node()
    node.protocol = None
    with pytest.raises(UserError, match="dataset.protocol"):
        load_dataset(node, cache_dir=tmp_path)


# ---------------------------------------------------------------------------------------------- groups


def test_popularity_head_tail_by_hand() -> None:
    # 12 items; head = ceil(0.1 * 12) = 2: item 0 (5) and, of the tie at 3 (items 1, 2, 3), item 1
    data = data_from_counts([5, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 2], [[]] * 12)
    groups = PopularityGroups(top_fraction=0.1).build(data)
    assert groups.kind == "pop" and groups.names == ["head", "tail"]
    assert np.flatnonzero(groups.membership[:, 0]).tolist() == [0, 1]
    assert np.all(groups.membership.sum(axis=1) == 1)
    # 0.1 * 1610 = 161.00000000000003 must not round up to 162
    assert (
        PopularityGroups(top_fraction=0.1).build(data_from_counts([1] * 1610, [[]] * 1610)).sizes()[0] == 161
    )


def test_popularity_quantiles_by_hand() -> None:
    # items by rank (count desc, index asc): 0 1 2 | 3 11 4 | 5 6 | 7 8 | 9 10 (parts of 3, 3, 2, 2, 2)
    data = data_from_counts([5, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 2], [[]] * 12)
    groups = PopularityGroups(top_fraction=None, n_quantiles=5).build(data)
    assert groups.names == ["q0", "q1", "q2", "q3", "q4"]
    label = groups.membership.argmax(axis=1)
    assert label.tolist() == [4, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0, 3]
    assert groups.sizes().tolist() == [2, 2, 2, 3, 3]


def test_genre_groups_by_hand() -> None:
    genres = [["Drama", "Romance"], ["Action"], [], ["Romance"], ["Action", "Drama"]]
    data = data_from_counts([1, 1, 1, 1, 1], genres)
    groups = GenreGroups().build(data)
    assert groups.kind == "genre" and groups.names == ["Action", "Drama", "Romance"]
    expected = [[0, 1, 1], [1, 0, 0], [0, 0, 0], [0, 0, 1], [1, 1, 0]]
    np.testing.assert_array_equal(groups.membership, np.array(expected, dtype=bool))
    with_unknown = GenreGroups(missing="group").build(data)
    assert with_unknown.names == ["Action", "Drama", "Romance", "unknown"]
    assert np.flatnonzero(with_unknown.membership[:, 3]).tolist() == [2]


def test_build_item_groups_from_config(ml100k: InteractionData) -> None:
    groups = build_item_groups(ml100k, ml100k_node().groups)
    assert set(groups) == {"pop", "genre"}
    assert groups["pop"].sizes().tolist() == [144, 1_433 - 144]  # ceil(0.1 * 1433) = 144
    head_counts = ml100k.train_counts()[groups["pop"].membership[:, 0]]
    assert head_counts.min() >= ml100k.train_counts()[groups["pop"].membership[:, 1]].max()
    assert groups["genre"].n_groups == 18
    assert build_item_groups(ml100k, GroupsSpec(genre=None)).keys() == {"pop"}


# ----------------------------------------------------------------------------------------------- stats


def test_stats_by_hand(tmp_path: Path) -> None:
    data = load_dataset(
        tiny_spec(write_recbole(tmp_path / "rb", TINY_INTERACTIONS, TINY_ITEMS)), cache_dir=tmp_path
    )
    stats = dataset_stats(data, build_item_groups(data, GroupsSpec()))
    assert stats.splits.loc["train"].tolist() == [3, 8, 10, pytest.approx(10 / 24)]
    assert stats.splits.loc["valid", ["users", "items", "interactions"]].tolist() == [3, 4, 4]
    assert stats.splits.loc["all", "interactions"] == 20
    # head = ceil(0.1 * 8) = 1 item: items 1 and 7 both have 2 training interactions; the lower index wins
    assert stats.flat["pop/head/items"] == 1 and stats.flat["pop/head/train_interactions"] == 2
    # catalogue ids 1 2 3 4 7 8 9 10: Comedy = odd ids except 7 (no genre) plus item 3: 1, 3, 9
    assert stats.groups["genre"].loc["Comedy", "items"] == 3
    assert stats.flat["genre/Comedy/train_interactions"] == 2 + 1 + 1  # item 1: u2, u4; 3: u2; 9: u1
    assert "head" in str(stats) and "protocol steps" in str(stats)


# ----------------------------------------------------------------------------------------------- cache


def test_cache_hit_then_rebuild_on_protocol_change_and_corruption(tmp_path: Path) -> None:
    folder = write_recbole(tmp_path / "rb", TINY_INTERACTIONS, TINY_ITEMS)
    cache = tmp_path / "cache"
    first = load_dataset(tiny_spec(folder), cache_dir=cache)
    directory = Path(first.info["cache_dir"])
    meta_mtime = (directory / META_FILE).stat().st_mtime_ns
    second = load_dataset(tiny_spec(folder), cache_dir=cache)
    assert (first.info["cache"], second.info["cache"]) == ("built", "hit")
    assert (directory / META_FILE).stat().st_mtime_ns == meta_mtime
    assert second.items["genres"].tolist() == first.items["genres"].tolist()
    assert (
        second.items["year"].dtype == "Int64"
        and second.train_timestamps.tolist() == first.train_timestamps.tolist()
    )
    assert not list(directory.glob("*.tmp"))

    changed = load_dataset(tiny_spec(folder, min_user_interactions=4), cache_dir=cache)
    assert changed.info["cache"] == "built" and changed.info["cache_dir"] != str(directory)

    npz = directory / SPLITS_FILE
    npz.write_bytes(npz.read_bytes()[:-20])  # truncated
    repaired = load_dataset(tiny_spec(folder), cache_dir=cache)
    assert repaired.info["cache"] == "built"
    for split in ("train", "valid", "test"):
        assert (repaired.split(split) != first.split(split)).nnz == 0
    (directory / META_FILE).write_text("{not json")
    assert load_dataset(tiny_spec(folder), cache_dir=cache).info["cache"] == "built"
    assert load_dataset(tiny_spec(folder), cache_dir=cache).info["cache"] == "hit"

    # a changed source file is a different cache entry
    with open(folder / "ml-100k.inter", "a") as handle:
        handle.write("9\t1\t5\t1\n")
    assert load_dataset(tiny_spec(folder), cache_dir=cache).info["cache_dir"] != str(directory)


def test_ml100k_second_load_is_a_cache_hit(cache_root: Path, ml100k: InteractionData) -> None:
    again = load_dataset(ml100k_node(), cache_dir=cache_root)
    assert again.info["cache"] == "hit" and again.info["cache_dir"] == ml100k.info["cache_dir"]
    assert again.items.equals(ml100k.items) and (again.test != ml100k.test).nnz == 0


# ---------------------------------------------------------------------------------------------- fetch


def test_damaged_raw_file_is_restored_from_the_wheel(
    cache_root: Path, ml100k_dir: Path, tmp_path: Path
) -> None:
    wheels = sorted((cache_root / "downloads").glob(f"recbole-{RECBOLE_VERSION}-*.whl"))
    if not wheels:
        pytest.skip("the recbole wheel is not in the cache's downloads folder")
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / wheels[0].name).write_bytes(wheels[0].read_bytes())
    raw_dir = fetch_from_recbole_wheel(tmp_path)
    item_file = raw_dir / "ml-100k.item"
    item_file.write_text(item_file.read_text().replace("Toy Story", "Toy Stories"))
    assert fetch_from_recbole_wheel(tmp_path) == raw_dir
    assert sha256_file(item_file) == RECBOLE_ML100K_SHA256[RECBOLE_VERSION]["ml-100k.item"]


def test_grouplens_zip_fallback_gives_the_same_dataset(
    ml100k: InteractionData, ml100k_dir: Path, tmp_path: Path
) -> None:
    """The real data converted to GroupLens files, zipped and fetched by URL, loads to the same dataset."""
    inter = pd.read_csv(ml100k_dir / "ml-100k.inter", sep="\t").astype(
        {"user_id:token": str, "item_id:token": str}
    )
    item = pd.read_csv(ml100k_dir / "ml-100k.item", sep="\t", dtype=str, keep_default_na=False)
    items = [
        (i, title, year, [g for g in cls.split() if g != "unknown"])
        for i, title, year, cls in item.itertuples(index=False)
    ]
    folder = write_grouplens(
        tmp_path / "src" / "ml-100k", list(inter.itertuples(index=False, name=None)), items
    )
    archive = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for name in ("u.data", "u.item"):
            bundle.write(folder / name, f"ml-100k/{name}")

    raw_dir = fetch_from_grouplens(tmp_path / "cache", archive.as_uri())
    data = load_dataset(MovieLens100K(path=str(raw_dir)), cache_dir=tmp_path / "cache")
    assert data.info["source"].startswith("GroupLens")
    assert data.user_ids.tolist() == ml100k.user_ids.tolist()
    assert data.items["item_id"].tolist() == ml100k.items["item_id"].tolist()
    assert data.items["genres"].tolist() == ml100k.items["genres"].tolist()
    assert data.items["year"].tolist() == ml100k.items["year"].tolist()
    assert data.items.set_index("item_id").loc["1", "title"] == "Toy Story (1995)"
    for split in ("train", "valid", "test"):
        assert (data.split(split) != ml100k.split(split)).nnz == 0


def test_fetch_failure_says_what_to_download(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="could not obtain MovieLens-100K") as err:
        ensure_ml100k(tmp_path, recbole_version="0.0.0", grouplens_url=(tmp_path / "none.zip").as_uri())
    message = str(err.value)
    assert "recbole==0.0.0" in message and "none.zip" in message
    assert "dataset.path" in message and "u.data" in message


# ---------------------------------------------------------------------------------------------- config


def test_shipped_yaml_validates_and_documents_every_key() -> None:
    from fairbench.config import validate_config

    node = ml100k_node()
    assert node.name == "ml100k" and node.path is None and node.strict is False
    assert validate_config(OmegaConf.create({"dataset": node, "paths": {}})) == []
    node.protocol.ordr = "random"
    node.groups.popularity.top_fraction = "ten percent"
    problems = validate_config(OmegaConf.create({"dataset": node, "paths": {}}))
    assert any("ordr" in p for p in problems) and any("top_fraction" in p for p in problems)
    for path in (YAML_PATH, YAML_PATH.parent / "protocol" / "general.yaml"):
        lines = path.read_text().splitlines()
        for index, line in enumerate(lines):
            if re.match(r"\s*[A-Za-z_]+:", line) and not line.lstrip().startswith("_target_"):
                assert "#" in line or lines[index - 1].lstrip().startswith("#"), f"undocumented key: {line}"
