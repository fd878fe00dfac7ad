"""Per-row metric values: the numbers whose means are the run's accuracy and group-utility metrics.

One table row per (evaluated row, K): ``recall``, ``ndcg``, ``hr`` of the row's top-K list (METHODS 2.1) and,
for every item group g of every group kind, ``<kind>/<g>`` = utility(u, g)@K with the configured utility
(recall / ndcg / hr restricted to the row's held-out items in g; NaN when it has none there, METHODS 2.2).
Means over the table's rows give ``recall@K``, ``ndcg@K``, ``hr@K``; the mean of ``<kind>/<g>`` over its
non-NaN rows gives G_Utility(g)@K under ``group_normalization=relevant`` (its sum over all rows divided by the
row count under ``all``). Only rows with held-out items are kept, as in :func:`evaluate_topk`.
These values are what paired significance tests compare between two runs (``fairbench report``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from fairbench.metrics._inputs import binary_csr, check_item_groups, check_ks, prepare_topk
from fairbench.metrics.accuracy import UTILITIES, UtilityName, per_user_utility, sorted_hit_matrix


def per_row_metrics(
    topk: np.ndarray,
    truth: sp.spmatrix,
    row_ids: np.ndarray,
    ks: Sequence[int],
    item_groups: Mapping[str, tuple[Sequence[str], np.ndarray]] | None = None,
    utility: UtilityName = "recall",
) -> pd.DataFrame:
    """Long table [rows with truth x len(ks)] with columns ``row``, ``k``, ``recall``, ``ndcg``, ``hr`` and
    ``<kind>/<group>`` per item group (float32; NaN where the row has no held-out item in the group).

    ``topk`` int [R, Kmax] and ``truth`` [R, I] align row by row; ``row_ids`` [R] names each row (user id, or
    sample index); ``item_groups`` maps a kind to (group names, bool membership [I, G]).
    """
    ks = check_ks(ks)
    truth = binary_csr(truth, "truth")
    n_rows, n_items = truth.shape
    lists = prepare_topk(topk, n_rows, n_items, max(ks))
    evaluated = np.diff(truth.indptr) > 0
    truth, lists = truth[evaluated], lists[evaluated]
    ids = np.asarray(row_ids, dtype=np.int64)[evaluated]
    hits = sorted_hit_matrix(lists, truth)
    n_relevant = np.diff(truth.indptr)
    columns: dict[str, np.ndarray] = {
        "row": np.repeat(ids, len(ks)),  # row-major: every K of a row, then the next row
        "k": np.tile(np.asarray(ks, dtype=np.int16), len(ids)),
    }
    for name in UTILITIES:
        columns[name] = per_user_utility(hits, n_relevant, ks, name).astype(np.float32).ravel()
    listed = np.where(lists >= 0, lists, 0)
    for kind, (names, membership) in (item_groups or {}).items():
        membership = check_item_groups(membership, n_items)
        in_group = np.rint(truth @ membership.astype(np.float64)).astype(np.int64)  # [R, G]
        for index, group in enumerate(names):
            values = per_user_utility(hits & membership[listed, index], in_group[:, index], ks, utility)
            values[in_group[:, index] == 0] = np.nan
            columns[f"{kind}/{group}"] = values.astype(np.float32).ravel()
    return pd.DataFrame(columns)
