"""Dataset statistics for ``fairbench data stats``: split sizes, protocol funnel, sequential samples,
bad data dropped while reading, item-group sizes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from fairbench.data.issues import ISSUE_KINDS
from fairbench.data.types import SPLITS, InteractionData, ItemGroups


@dataclass
class DatasetStats:
    """Printable tables plus a flat dict of the same numbers.

    ``splits``: one row per split and "all": users and items with >= 1 interaction in it, interactions,
    density = interactions / (U x I) over the full user set and item catalogue. ``funnel``: interactions
    (or samples) after each protocol step. ``samples``: per split, next-item samples, their users and
    distinct targets, and the mean history length (empty when the dataset has none). ``issues``: per kind
    of bad data (:data:`fairbench.data.issues.ISSUE_KINDS`), how many were dropped and the first
    occurrence (empty for a dataset processed before issues were recorded). ``groups[kind]``: per group,
    items, share of the catalogue, and interactions per split on the group's items (genre groups overlap,
    so their shares sum to more than 1).
    """

    name: str
    splits: pd.DataFrame
    funnel: pd.DataFrame
    groups: dict[str, pd.DataFrame] = field(default_factory=dict)
    flat: dict[str, float | int] = field(default_factory=dict)
    samples: pd.DataFrame = field(default_factory=pd.DataFrame)
    issues: pd.DataFrame = field(default_factory=pd.DataFrame)

    def __str__(self) -> str:
        parts = [f"dataset {self.name}", "", self.splits.to_string(float_format=lambda x: f"{x:.6f}")]
        if len(self.funnel):
            parts += ["", "protocol steps", self.funnel.to_string()]
        if len(self.samples):
            parts += ["", "sequential samples", self.samples.to_string(float_format=lambda x: f"{x:.2f}")]
        if len(self.issues):
            total = int(self.issues["count"].sum())
            title = "bad data in the source files" + (" (none)" if total == 0 else " (dropped)")
            shown = self.issues.copy()
            shown["first"] = shown["first"].map(lambda text: text if len(text) <= 160 else text[:157] + "...")
            parts += ["", title, shown.to_string()]
        for kind, table in self.groups.items():
            parts += ["", f"item groups: {kind}", table.to_string(float_format=lambda x: f"{x:.4f}")]
        return "\n".join(parts)


def dataset_stats(data: InteractionData, groups: dict[str, ItemGroups] | None = None) -> DatasetStats:
    """Per-split and per-group counts of ``data`` (see :class:`DatasetStats`)."""
    cells = data.n_users * data.n_items
    all_splits = data.train + data.valid + data.test
    rows = {}
    for split, matrix in (*((s, data.split(s)) for s in SPLITS), ("all", all_splits)):
        rows[split] = {
            "users": int(np.count_nonzero(np.diff(matrix.indptr))),
            "items": int(np.count_nonzero(np.bincount(matrix.indices, minlength=data.n_items))),
            "interactions": int(matrix.nnz),
            "density": matrix.nnz / cells if cells else 0.0,
        }
    splits = pd.DataFrame.from_dict(rows, orient="index")
    flat: dict[str, float | int] = {"users": data.n_users, "items": data.n_items}
    for split, row in rows.items():
        flat.update({f"{split}/{key}": value for key, value in row.items()})

    counts = data.info.get("counts", {})
    funnel = pd.DataFrame(
        {"count": [counts[k] for k in _FUNNEL if k in counts]},
        index=[_FUNNEL[k] for k in _FUNNEL if k in counts],
    )

    sample_rows = {}
    for split, samples in (data.samples or {}).items():
        sample_rows[split] = {
            "samples": len(samples),
            "users": int(len(np.unique(samples.user))),
            "targets": int(len(np.unique(samples.target))),
            "mean_history": float(samples.lengths().mean()) if len(samples) else 0.0,
        }
        flat[f"samples/{split}"] = len(samples)
    sample_table = pd.DataFrame.from_dict(sample_rows, orient="index")

    recorded = data.info.get("issues") or {}
    issue_table = pd.DataFrame(
        {
            "count": [int(recorded.get(kind, {}).get("count", 0)) for kind in ISSUE_KINDS],
            "first": [str(recorded.get(kind, {}).get("first", "")) for kind in ISSUE_KINDS],
        },
        index=pd.Index(list(ISSUE_KINDS), name="problem"),
    )
    if not recorded:
        issue_table = issue_table.iloc[0:0]
    for kind, row in issue_table.iterrows():
        flat[f"issues/{kind}"] = int(row["count"])

    group_tables: dict[str, pd.DataFrame] = {}
    per_split_counts = {s: np.bincount(data.split(s).indices, minlength=data.n_items) for s in SPLITS}
    for kind, grouping in (groups or {}).items():
        member = grouping.membership.astype(np.int64)
        table = pd.DataFrame(index=pd.Index(grouping.names, name="group"))
        table["items"] = grouping.sizes()
        table["item_share"] = table["items"] / max(data.n_items, 1)
        for split in SPLITS:
            table[f"{split}_interactions"] = per_split_counts[split] @ member
        total = max(int(per_split_counts["train"].sum()), 1)
        table["train_share"] = table["train_interactions"] / total
        group_tables[kind] = table
        for name, row in table.iterrows():
            flat[f"{kind}/{name}/items"] = int(row["items"])
            flat[f"{kind}/{name}/train_interactions"] = int(row["train_interactions"])
    return DatasetStats(
        name=data.name,
        splits=splits,
        funnel=funnel,
        groups=group_tables,
        flat=flat,
        samples=sample_table,
        issues=issue_table,
    )


_FUNNEL = {
    "raw_interactions": "raw",
    "given_samples": "given samples",
    "after_min_rating": "rating >= min_rating",
    "after_dedup": "deduplicated (user, item)",
    "after_user_filter": "users with >= min_user_interactions",
    "after_item_filter": "items with >= min_item_interactions",
    "after_kcore": "iterative k-core",
    "samples": "samples (sliding window)",
    "valid_carved_from_train": "valid samples carved from train",
    "train_samples_before_subsampling": "train samples before sub-sampling",
    "valid_samples_before_subsampling": "valid samples before sub-sampling",
    "test_samples_before_subsampling": "test samples before sub-sampling",
    "train_samples": "train samples",
    "valid_samples": "valid samples",
    "test_samples": "test samples",
    "removed_valid": "valid items not in train (removed)",
    "removed_test": "test items not in train (removed)",
    "train_interactions": "train",
    "valid_interactions": "valid",
    "test_interactions": "test",
}
