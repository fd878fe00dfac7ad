"""Checks every source goes through before its protocol: duplicates, empty titles, unknown items.

:func:`clean_raw` applies the bad-data policy of :mod:`fairbench.data.issues` to a
:class:`~fairbench.data.types.RawInteractions`, in this order:

1. item table: a repeated item id keeps its first row (``duplicate_items``); an item whose title is missing
   or blank is dropped (``empty_titles``). Both are counted (and rejected when strict) only for items that
   some interaction or sample names: the others never reach a catalogue (Amazon meta files list every item
   of a category, most of them never reviewed in the 5-core files);
2. given samples (bigrec_csv): a sample naming an item dropped in 1 is dropped
   (``untitled_item_interactions``), one naming an item absent from the item table is dropped
   (``unknown_items``), and a sample whose (user, target) repeats an earlier sample's (by time, then
   train < valid < test, then line) is dropped (``duplicate_interactions``). The interactions are then
   derived from the samples (:func:`interactions_from_samples`);
3. interactions: those on items dropped in 1 (``untitled_item_interactions``) or absent from the item
   table (``unknown_items``) are dropped; repeated (user, item) pairs are counted
   (``duplicate_interactions``) and left to the protocol, which keeps the earliest one after its rating
   filter (so that a low rating followed by a high one keeps the high one when min_rating drops the low).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fairbench.data.issues import DataIssues, location
from fairbench.data.types import RawInteractions, RawSamples

# A history item's time in interactions derived from samples: the sample's time minus this many seconds per
# step back from the target (so the order within a sample survives; see interactions_from_samples).
HISTORY_STEP_SECONDS = 1e-3


def clean_raw(raw: RawInteractions) -> RawInteractions:
    """``raw`` with bad data dropped and reported to ``raw.issues`` (see the module docstring)."""
    issues = raw.issues
    items = raw.items.reset_index(drop=True).copy()
    items["item_id"] = items["item_id"].astype(str).str.strip()
    item_lines = items["line"].to_numpy() if "line" in items else None
    item_file = raw.items_file or raw.source

    def item_where(row: int) -> str:
        return location(item_file, None if item_lines is None else int(item_lines[row]))

    if raw.samples is not None:
        named = pd.unique(pd.Series(raw.samples.item_ids, dtype=object))
    else:
        assert raw.interactions is not None
        named = raw.interactions["item_id"].unique()
    referenced = items["item_id"].isin(named).to_numpy()
    repeated = items["item_id"].duplicated(keep="first").to_numpy()
    if (repeated & referenced).any():
        row = int(np.flatnonzero(repeated & referenced)[0])
        item_id = items["item_id"].iloc[row]
        original = int(np.flatnonzero(items["item_id"].to_numpy() == item_id)[0])
        issues.report(
            "duplicate_items",
            item_where(row),
            f"item id {item_id!r} was already listed at {_short(item_where(original), item_file)}",
            count=int((repeated & referenced).sum()),
        )
    titles = items["title"].map(
        lambda t: "" if t is None or (isinstance(t, float) and np.isnan(t)) else str(t)
    )
    untitled = (titles.str.strip() == "").to_numpy() & ~repeated
    if (untitled & referenced).any():
        row = int(np.flatnonzero(untitled & referenced)[0])
        issues.report(
            "empty_titles",
            item_where(row),
            f"item {items['item_id'].iloc[row]!r} has no title",
            count=int((untitled & referenced).sum()),
        )
    untitled_ids = pd.Index(items.loc[untitled, "item_id"].unique())
    items["title"] = titles
    items = items[~repeated & ~untitled].drop(columns=["line"], errors="ignore").reset_index(drop=True)
    known = pd.Index(items["item_id"])

    if raw.samples is not None:
        raw.samples = _clean_samples(raw.samples, known, untitled_ids, issues)
        raw.interactions = interactions_from_samples(raw.samples)
    if raw.interactions is None:
        raise ValueError(f"{raw.source}: the loader returned neither interactions nor samples")
    frame = raw.interactions.reset_index(drop=True)
    lines = frame["line"].to_numpy() if "line" in frame else None
    inter_file = raw.interactions_file or raw.source

    def where(row: int) -> str:
        return location(inter_file, None if lines is None else int(lines[row]))

    item_ids = frame["item_id"]
    on_untitled = item_ids.isin(untitled_ids).to_numpy()
    unknown = ~item_ids.isin(known).to_numpy() & ~on_untitled
    for kind, mask, detail in (
        ("untitled_item_interactions", on_untitled, "has no title"),
        ("unknown_items", unknown, f"is absent from {item_file}"),
    ):
        if mask.any():
            row = int(np.flatnonzero(mask)[0])
            issues.report(kind, where(row), f"item {item_ids.iloc[row]!r} {detail}", count=int(mask.sum()))
    frame = frame[~on_untitled & ~unknown].reset_index(drop=True)
    lines = frame["line"].to_numpy() if "line" in frame else None

    repeated = frame.duplicated(["user_id", "item_id"], keep="first").to_numpy()
    if repeated.any():
        row = int(np.flatnonzero(repeated)[0])
        user, item = frame["user_id"].iloc[row], frame["item_id"].iloc[row]
        same = (frame["user_id"] == user).to_numpy() & (frame["item_id"] == item).to_numpy()
        issues.report(
            "duplicate_interactions",
            where(row),
            f"user {user!r} and item {item!r} repeat "
            f"{_short(where(int(np.flatnonzero(same)[0])), inter_file)}",
            count=int(repeated.sum()),
        )
    raw.interactions = frame
    raw.items = items
    return raw


def _clean_samples(
    samples: RawSamples, known: pd.Index, untitled_ids: pd.Index, issues: DataIssues
) -> RawSamples:
    n = len(samples)
    if n == 0:
        return samples
    starts = samples.indptr[:-1]
    flat_untitled = pd.Index(samples.item_ids).isin(untitled_ids)
    flat_unknown = (known.get_indexer(samples.item_ids) < 0) & ~flat_untitled
    on_untitled = np.add.reduceat(flat_untitled.astype(np.int64), starts) > 0
    unknown = (np.add.reduceat(flat_unknown.astype(np.int64), starts) > 0) & ~on_untitled
    row_of_flat = np.repeat(np.arange(n), np.diff(samples.indptr))

    def where(row: int) -> str:
        return location(samples.files.get(int(samples.split[row]), "samples"), int(samples.line[row]))

    for kind, mask, flat, detail in (
        ("untitled_item_interactions", on_untitled, flat_untitled, "has no title"),
        ("unknown_items", unknown, flat_unknown, "is absent from the item table"),
    ):
        if mask.any():
            first_flat = int(np.flatnonzero(flat)[0])
            row = int(row_of_flat[first_flat])
            issues.report(
                kind,
                where(row),
                f"item {str(samples.item_ids[first_flat])!r} {detail}; the sample is dropped",
                count=int(mask.sum()),
            )
    samples = samples.select(~on_untitled & ~unknown)

    targets = samples.item_ids[samples.indptr[1:] - 1]
    order = np.lexsort((samples.line, samples.split, samples.timestamp))
    pairs = pd.DataFrame({"user": samples.user_id[order], "target": targets[order]})
    repeated_sorted = pairs.duplicated(keep="first").to_numpy()
    repeated = np.zeros(len(samples), dtype=bool)
    repeated[order] = repeated_sorted
    if repeated.any():
        row = int(order[np.flatnonzero(repeated_sorted)[0]])
        same = (samples.user_id == samples.user_id[row]) & (targets == targets[row]) & ~repeated
        issues.report(
            "duplicate_interactions",
            where(row),
            f"user {str(samples.user_id[row])!r} and target {str(targets[row])!r} repeat "
            f"{_short(where(int(np.flatnonzero(same)[0])), samples.files.get(int(samples.split[row])))}",
            count=int(repeated.sum()),
        )
    return samples.select(~repeated)


def interactions_from_samples(samples: RawSamples) -> pd.DataFrame:
    """One interaction per distinct (user, item) named by any sample, as the general protocol needs.

    A sample with time t gives its target time t and the item d steps back in its history time
    t - d * 1 ms (:data:`HISTORY_STEP_SECONDS`), so a user's items keep their order; an item named by several
    samples keeps its earliest time. No ratings (NaN).
    """
    lengths = np.diff(samples.indptr)
    row = np.repeat(np.arange(len(samples)), lengths)
    steps_back = (samples.indptr[1:] - 1)[row] - np.arange(len(samples.item_ids))
    frame = pd.DataFrame(
        {
            "user_id": samples.user_id[row],
            "item_id": samples.item_ids,
            "rating": np.nan,
            "timestamp": samples.timestamp[row] - steps_back * HISTORY_STEP_SECONDS,
        }
    )
    frame = frame.sort_values("timestamp", kind="stable").drop_duplicates(
        ["user_id", "item_id"], keep="first"
    )
    return frame.sort_index(kind="stable").reset_index(drop=True)


def _short(where: str, file: object) -> str:
    """``where`` without its file name when that is ``file`` ("line 12" rather than "/x/f.dat, line 12")."""
    prefix = f"{file}, "
    return where[len(prefix) :] if where.startswith(prefix) else where
