"""Both protocols on fixture data, checked against hand computation and a plain-Python reference:
general (k-core, split proportions, warm valid/test, samples), sequential (window, temporal order, 8:1:1,
sub-sampling, the matrices' definition, a given split kept or carved), genre top-N, cache of samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from fairbench.data import (
    BigRecCSV,
    GeneralProtocol,
    GenreGroups,
    InteractionData,
    MovieLens1M,
    RawInteractions,
    SequentialProtocol,
    dataset_stats,
    load_dataset,
)
from fairbench.data.cache import SPLITS_FILE
from fairbench.data.groups import PopularityGroups
from fairbench.errors import UserError
from tests.helpers.data_files import (
    bigrec_samples,
    interaction_rows,
    sequences,
    write_bigrec,
    write_ml1m,
)

SPLITS = ("train", "valid", "test")
SEQS = sequences(20, 30, 12, seed=3)  # 20 users x 12 distinct items, 220 sliding-window samples


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("protocols")
    write_ml1m(root / "ml", interaction_rows(SEQS), 30)
    write_bigrec(root / "br", bigrec_samples(SEQS), 30)
    write_bigrec(root / "br-novalid", bigrec_samples(SEQS), 30, with_valid=False)
    return root


def ml1m(files: Path, protocol, tmp_path: Path) -> InteractionData:
    return load_dataset(MovieLens1M(path=str(files / "ml"), protocol=protocol), cache_dir=tmp_path)


def pairs(data: InteractionData, split: str) -> set[tuple[str, str]]:
    coo = data.split(split).tocoo()
    items = data.items["item_id"].to_numpy()
    return set(zip(data.user_ids[coo.row].tolist(), items[coo.col].tolist(), strict=True))


def raw_frame(rows: list[tuple[str, str]]) -> RawInteractions:
    """Interactions (user, item) at increasing times, without ratings; items named by them."""
    frame = pd.DataFrame(rows, columns=["user_id", "item_id"])
    frame["rating"], frame["timestamp"] = np.nan, np.arange(len(frame), dtype=float)
    items = sorted(frame["item_id"].unique())
    table = pd.DataFrame({"item_id": items, "title": items, "genres": [[] for _ in items]})
    return RawInteractions(frame, table, source="hand")


# -------------------------------------------------------------------------------------------------- general


def test_iterative_kcore_by_hand() -> None:
    # users a: 1 2 3, b: 1 2, c: 3 4. min 2 / 2. One pass: users all pass; item 4 (1 interaction) goes, so c
    # keeps only 3. Iterative: c goes (1 < 2), then item 3 (1 < 2), leaving a: 1 2, b: 1 2.
    rows = [("a", "1"), ("a", "2"), ("a", "3"), ("b", "1"), ("b", "2"), ("c", "3"), ("c", "4")]
    common = dict(min_rating=None, min_user_interactions=2, min_item_interactions=2, ratios=(1.0, 0.0, 0.0))
    once = GeneralProtocol(**common).apply(raw_frame(rows), "hand")
    assert once.info["counts"]["after_item_filter"] == 6 and once.user_ids.tolist() == ["a", "b", "c"]
    core = GeneralProtocol(**common, iterative_kcore=True).apply(raw_frame(rows), "hand")
    assert core.user_ids.tolist() == ["a", "b"] and core.items["item_id"].tolist() == ["1", "2"]
    assert pairs(core, "train") == {("a", "1"), ("a", "2"), ("b", "1"), ("b", "2")}
    assert pairs(once, "train") == {("a", "1"), ("a", "2"), ("a", "3"), ("b", "1"), ("b", "2"), ("c", "3")}
    assert core.info["counts"]["after_kcore"] == 4 and core.info["counts"]["kcore_rounds"] == 3
    default = GeneralProtocol(min_rating=None, min_user_interactions=2).apply(raw_frame(rows), "hand")
    assert (
        "after_item_filter" not in default.info["counts"] and default.info["counts"]["after_user_filter"] == 7
    )


@pytest.mark.parametrize("order", ["random", "temporal"])
def test_general_split_proportions_and_warm_items(files: Path, tmp_path: Path, order: str) -> None:
    data = ml1m(files, GeneralProtocol(min_user_interactions=5, order=order), tmp_path)
    assert data.n_users == 20
    train_n = np.diff(data.train.indptr)
    assert (train_n == 4).all()  # floor(0.4 x 12)
    assert np.all(np.diff(data.valid.indptr) <= 8 - 4) and np.all(np.diff(data.test.indptr) <= 12 - 8)
    removed = data.info["counts"]["removed_valid"] + data.info["counts"]["removed_test"]
    assert data.train.nnz + data.valid.nnz + data.test.nnz + removed == 240
    train_items = set(data.train.indices.tolist())
    assert set(data.valid.indices) <= train_items and set(data.test.indices) <= train_items
    assert data.train_counts().min() >= 1 and data.train.multiply(data.test).nnz == 0
    if order == "temporal":
        for u in range(data.n_users):
            stamps = {
                s: getattr(data, f"{s}_timestamps")[data.split(s).indptr[u] : data.split(s).indptr[u + 1]]
                for s in SPLITS
            }
            assert stamps["train"].max() < min(
                stamps["valid"].min(initial=np.inf), stamps["test"].min(initial=np.inf)
            )


def test_general_samples(files: Path, tmp_path: Path) -> None:
    data = ml1m(files, GeneralProtocol(min_user_interactions=5, order="temporal", history_length=3), tmp_path)
    samples = data.samples
    train = samples["train"]
    assert len(train) == data.train.nnz - data.n_users  # every train interaction but each user's first
    assert train.history.shape == (len(train), 3) and train.history.dtype == np.int32
    # the matrices are the samples' targets plus each user's first train item
    targets = sp.csr_matrix((np.ones(len(train)), (train.user, train.target)), shape=data.train.shape)
    assert ((data.train - targets) != 0).sum() == data.n_users
    # user 0: train items in time order; sample j has the (up to) 3 items before it, left-padded
    u0 = data.train.indices[data.train.indptr[0] : data.train.indptr[1]]
    in_time = u0[np.argsort(data.train_timestamps[data.train.indptr[0] : data.train.indptr[1]])]
    mine = train.user == 0
    assert train.target[mine].tolist() == in_time[1:].tolist()
    assert train.history[mine].tolist() == [
        [-1, -1, in_time[0]],
        [-1, in_time[0], in_time[1]],
        in_time[:3].tolist(),
    ]
    valid, test = samples["valid"], samples["test"]
    assert sorted(zip(valid.user, valid.target, strict=True)) == sorted(
        zip(*data.valid.nonzero(), strict=True)
    )
    assert valid.history[valid.user == 0][0].tolist() == in_time[-3:].tolist()  # the last 3 train items
    assert (test.lengths() == 3).all() and len(test) == data.test.nnz


# ----------------------------------------------------------------------------------------------- sequential


def reference_samples(length: int = 10) -> list[tuple[str, list[str], str, int]]:
    """(user, history, target, time) by a plain reading of METHODS.md 1.2, sorted by time then user."""
    out = []
    for user, items, times in SEQS:
        for p in range(1, len(items)):
            out.append((user, items[max(0, p - length) : p], items[p], times[p]))
    return sorted(out, key=lambda s: (s[3], int(s[0])))


def as_ids(data: InteractionData, split: str) -> list[tuple[str, list[str], str, int]]:
    s = data.samples[split]
    item_ids = data.items["item_id"].to_numpy()
    return [
        (data.user_ids[u], [item_ids[h] for h in hist if h >= 0], item_ids[t], int(ts))
        for u, hist, t, ts in zip(s.user, s.history, s.target, s.timestamp, strict=True)
    ]


def test_sequential_samples_follow_the_reference(files: Path, tmp_path: Path) -> None:
    data = ml1m(files, SequentialProtocol(), tmp_path)
    reference = reference_samples()
    assert len(reference) == 220
    n_train, n_valid = int(0.8 * 220), int(0.9 * 220) - int(0.8 * 220)  # 176, 22, 22
    got = as_ids(data, "train") + as_ids(data, "valid") + as_ids(data, "test")
    assert got == reference
    assert [len(data.samples[s]) for s in SPLITS] == [n_train, n_valid, 220 - n_train - n_valid]
    # temporal order: every train target precedes every valid one, which precede every test one
    times = {s: data.samples[s].timestamp for s in SPLITS}
    assert times["train"].max() <= times["valid"].min() and times["valid"].max() <= times["test"].min()
    assert max(len(h) for _, h, _, _ in got) == 10 and data.samples["train"].history.shape[1] == 10
    # titles keep the year (BIGRec prompts); the catalogue is every item of the sequences
    assert data.items["title"].str.fullmatch(r".+ \(\d{4}\)").all()
    assert set(data.items["item_id"]) == {i for _, items, _ in SEQS for i in items}


def test_sequential_matrices_are_targets_and_train_histories(files: Path, tmp_path: Path) -> None:
    data = ml1m(files, SequentialProtocol(history_length=4), tmp_path)
    expected = {s: set() for s in SPLITS}
    for split in SPLITS:
        for user, history, target, _ in as_ids(data, split):
            expected[split].add((user, target))
            if split == "train":
                expected[split].update((user, h) for h in history)
    for split in SPLITS:
        assert pairs(data, split) == expected[split]
    assert data.info["counts"]["removed_valid"] == data.info["counts"]["removed_test"] == 0
    assert data.train.multiply(data.valid).nnz == data.train.multiply(data.test).nnz == 0
    # timestamps are the interactions' own
    raw = {(u, i): t for u, items, times in SEQS for i, t in zip(items, times, strict=True)}
    coo = data.train.tocoo()
    ids = data.items["item_id"].to_numpy()
    own = [raw[(data.user_ids[r], ids[c])] for r, c in zip(coo.row, coo.col, strict=True)]
    assert data.train_timestamps.tolist() == own


def test_sequential_subsampling(files: Path, tmp_path: Path) -> None:
    full = ml1m(files, SequentialProtocol(), tmp_path)
    capped = SequentialProtocol(max_train_samples=50, max_test_samples=10, seed=7)
    small = ml1m(files, capped, tmp_path)
    assert [len(small.samples[s]) for s in SPLITS] == [50, 22, 10]
    assert small.info["counts"]["train_samples_before_subsampling"] == 176
    for split in SPLITS:
        kept = as_ids(small, split)
        everything = as_ids(full, split)
        assert all(sample in everything for sample in kept)
        assert [s[3] for s in kept] == sorted(s[3] for s in kept)  # still in time order
    again = ml1m(files, capped, tmp_path / "other-cache")
    assert as_ids(again, "train") == as_ids(small, "train")  # seeded
    other = ml1m(files, SequentialProtocol(max_train_samples=50, max_test_samples=10, seed=8), tmp_path)
    assert as_ids(other, "train") != as_ids(small, "train")
    assert as_ids(other, "valid") == as_ids(small, "valid")
    # the valid split is drawn from its own stream: capping train does not change which test samples stay
    only_test = ml1m(files, SequentialProtocol(max_test_samples=10, seed=7), tmp_path)
    assert as_ids(only_test, "test") == as_ids(small, "test")
    assert small.train.nnz < full.train.nnz  # the matrices follow the kept samples


def test_popularity_over_the_training_period_ignores_train_subsampling(files: Path, tmp_path: Path) -> None:
    """``counted_on=training_period``: the counts of the whole training split (= the train matrix built
    without sub-sampling), also from the cache; ``train_matrix``: the kept samples' counts."""
    full = ml1m(files, SequentialProtocol(), tmp_path)
    capped = SequentialProtocol(max_train_samples=50, seed=7)
    small = ml1m(files, capped, tmp_path)
    cached = ml1m(files, capped, tmp_path)
    assert cached.info["cache"] == "hit" and full.training_period_counts is None
    assert np.array_equal(small.items["item_id"], full.items["item_id"])  # same catalogue
    for data in (small, cached):
        assert np.array_equal(data.period_counts(), full.train_counts())
    assert small.info["counts"]["training_period_interactions"] == full.train.nnz
    assert np.array_equal(full.period_counts(), full.train_counts())
    assert not np.array_equal(small.train_counts(), full.train_counts())
    period = PopularityGroups(top_fraction=None, n_quantiles=3, counted_on="training_period")
    kept = PopularityGroups(top_fraction=None, n_quantiles=3)
    assert np.array_equal(period.build(small).membership, kept.build(full).membership)
    assert not np.array_equal(kept.build(small).membership, period.build(small).membership)
    with pytest.raises(UserError, match="counted_on"):
        PopularityGroups(counted_on="everything")


def test_sequential_needs_time_and_two_interactions() -> None:
    raw = raw_frame([("a", "1"), ("b", "2")])
    with pytest.raises(UserError, match="two or more interactions"):
        SequentialProtocol().apply(raw, "hand")
    raw = raw_frame([("a", "1"), ("a", "2")])
    raw.interactions["timestamp"] = np.nan
    with pytest.raises(UserError, match="without a timestamp"):
        SequentialProtocol().apply(raw, "hand")
    with pytest.raises(UserError, match="max_train_samples"):
        SequentialProtocol(max_train_samples=0)


# ------------------------------------------------------------------------------------ bigrec_csv: given split


def test_given_split_is_kept_and_matches_the_protocol(files: Path, tmp_path: Path) -> None:
    given = load_dataset(BigRecCSV(path=str(files / "br")), cache_dir=tmp_path)
    assert (
        given.info["counts"]["given_samples"] == 220 and "valid_carved_from_train" not in given.info["counts"]
    )
    # the fixture's split is the same 8:1:1 global time cut: equal to the protocol run on the raw sequences
    computed = ml1m(files, SequentialProtocol(), tmp_path)
    for split in SPLITS:
        assert as_ids(given, split) == as_ids(computed, split)
        assert pairs(given, split) == pairs(computed, split)


def test_missing_valid_is_carved_from_the_end_of_train(files: Path, tmp_path: Path) -> None:
    data = load_dataset(BigRecCSV(path=str(files / "br-novalid")), cache_dir=tmp_path)
    # train.csv holds the 198 first samples; the last 198 - floor(8/9 x 198) = 22 by time become valid
    assert data.info["counts"]["valid_carved_from_train"] == 22
    assert [len(data.samples[s]) for s in SPLITS] == [176, 22, 22]
    assert data.samples["train"].timestamp.max() <= data.samples["valid"].timestamp.min()
    reference = reference_samples()
    assert as_ids(data, "valid") == reference[176:198]


def test_general_protocol_on_given_samples_resplits_their_interactions(files: Path, tmp_path: Path) -> None:
    protocol = GeneralProtocol(min_rating=None, min_user_interactions=5, order="temporal")
    from_samples = load_dataset(BigRecCSV(path=str(files / "br"), protocol=protocol), cache_dir=tmp_path)
    from_ratings = ml1m(files, protocol, tmp_path)
    for split in SPLITS:
        assert pairs(from_samples, split) == pairs(from_ratings, split)
    train_items = set(from_samples.train.indices.tolist())
    assert set(from_samples.test.indices) <= train_items and set(from_samples.valid.indices) <= train_items


# --------------------------------------------------------------------------------------------- groups, stats


def test_genre_top_n_merges_the_rest_into_other() -> None:
    genres = [["Drama", "Romance"], ["Action"], [], ["Drama"], ["Action", "Drama"], ["War"], ["Romance"]]
    items = pd.DataFrame({"item_id": list("abcdefg"), "title": "t", "genres": genres})
    empty = sp.csr_matrix((1, 7), dtype=np.float32)
    data = InteractionData("hand", np.array(["u"]), items, empty, empty, empty)
    # items per genre: Drama 3, Action 2, Romance 2, War 1; top 2 = Drama and (tie, alphabetical) Action
    groups = GenreGroups(top_n=2).build(data)
    assert groups.names == ["Action", "Drama", "other"]
    assert groups.membership.astype(int).tolist() == [
        [0, 1, 1], [1, 0, 0], [0, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 1], [0, 0, 1]
    ]  # fmt: skip
    assert GenreGroups(top_n=10).build(data).names == ["Action", "Drama", "Romance", "War"]
    assert GenreGroups(top_n=1, missing="group").build(data).names == ["Drama", "other", "unknown"]
    with pytest.raises(UserError, match="top_n"):
        GenreGroups(top_n=0)


def test_stats_show_samples_and_bad_data(files: Path, tmp_path: Path) -> None:
    stats = dataset_stats(ml1m(files, SequentialProtocol(), tmp_path))
    assert stats.samples.loc["train", "samples"] == 176 and stats.flat["samples/test"] == 22
    assert stats.issues["count"].sum() == 0 and len(stats.issues) == 7
    assert "bad data in the source files (none)" in str(stats) and "sequential samples" in str(stats)


# ------------------------------------------------------------------------------------------------------ cache


def test_cache_keeps_samples_and_rebuilds_when_damaged_or_changed(files: Path, tmp_path: Path) -> None:
    spec = BigRecCSV(path=str(files / "br"), protocol=SequentialProtocol(history_length=3))
    first = load_dataset(spec, cache_dir=tmp_path)
    hit = load_dataset(spec, cache_dir=tmp_path)
    assert (first.info["cache"], hit.info["cache"]) == ("built", "hit")
    for split in SPLITS:
        a, b = first.samples[split], hit.samples[split]
        assert np.array_equal(a.history, b.history) and np.array_equal(a.target, b.target)
        assert np.array_equal(a.user, b.user) and np.array_equal(a.timestamp, b.timestamp)
    assert hit.info["issues"] == first.info["issues"]
    directory = Path(first.info["cache_dir"])
    npz = directory / SPLITS_FILE
    npz.write_bytes(npz.read_bytes()[: len(npz.read_bytes()) // 2])  # truncated
    repaired = load_dataset(spec, cache_dir=tmp_path)
    assert repaired.info["cache"] == "built" and as_ids(repaired, "test") == as_ids(first, "test")
    # a protocol change and a source change are both new cache entries
    other = load_dataset(BigRecCSV(path=str(files / "br"), protocol=SequentialProtocol()), cache_dir=tmp_path)
    assert other.info["cache_dir"] != str(directory) and other.samples["train"].history.shape[1] == 10
    copy = tmp_path / "copy"
    copy.mkdir()
    for source in (files / "br").iterdir():
        (copy / source.name).write_bytes(source.read_bytes())
    same = load_dataset(
        BigRecCSV(path=str(copy), protocol=SequentialProtocol(history_length=3)), cache_dir=tmp_path
    )
    assert same.info["cache"] == "hit"  # keyed by content, not by folder
    new_item = min({str(i) for i in range(1, 31)} - set(SEQS[0][1]))
    with open(copy / "test.csv", "a") as handle:
        handle.write(f'1,"[{SEQS[0][1][-1]}, {new_item}]",9999999\n')
    changed = load_dataset(
        BigRecCSV(path=str(copy), protocol=SequentialProtocol(history_length=3)), cache_dir=tmp_path
    )
    assert changed.info["cache"] == "built" and len(changed.samples["test"]) == len(first.samples["test"]) + 1
