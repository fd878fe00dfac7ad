"""Dataset statistics for ``fairbench data stats``: split sizes, protocol funnel, item-group sizes."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from fairbench.data.types import SPLITS, InteractionData, ItemGroups


@dataclass
class DatasetStats:
    """Printable tables plus a flat dict of the same numbers.

    ``splits``: one row per split and "all": users and items with >= 1 interaction in it, interactions,
    density = interactions / (U x I) over the full user set and item catalogue. ``funnel``: interactions
    after each protocol step. ``groups[kind]``: per group, items, share of the catalogue, and interactions
    per split on the group's items (genre groups overlap, so their shares sum to more than 1).
    """

    name: str
    splits: pd.DataFrame
    funnel: pd.DataFrame
    groups: dict[str, pd.DataFrame] = field(default_factory=dict)
    flat: dict[str, float | int] = field(default_factory=dict)

    def __str__(self) -> str:
        parts = [f"dataset {self.name}", "", self.splits.to_string(float_format=lambda x: f"{x:.6f}")]
        if len(self.funnel):
            parts += ["", "protocol steps", self.funnel.to_string()]
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
        {"interactions": [counts[k] for k in _FUNNEL if k in counts]},
        index=[_FUNNEL[k] for k in _FUNNEL if k in counts],
    )

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
    return DatasetStats(name=data.name, splits=splits, funnel=funnel, groups=group_tables, flat=flat)


_FUNNEL = {
    "raw_interactions": "raw",
    "after_min_rating": "rating >= min_rating",
    "after_dedup": "deduplicated (user, item)",
    "after_user_filter": "users with >= min_user_interactions",
    "removed_valid": "valid items not in train (removed)",
    "removed_test": "test items not in train (removed)",
    "train_interactions": "train",
    "valid_interactions": "valid",
    "test_interactions": "test",
}
