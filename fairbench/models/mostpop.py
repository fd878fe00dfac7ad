"""MostPop: every item scored by its training popularity, the same ranking for every history or user.

The non-personalised baseline of sequential-recommendation studies (e.g. the SASRec paper's "PopRec",
Kang & McAuley, ICDM 2018, Sec. IV-B; IFairLRS and BIGRec compare against it). Scores are counts c_i:

- ``interactions`` (default): column sums of ``data.train``, the users with a training interaction with
  item i. Under the sequential protocol the training matrix holds the (user, item) pairs of the train
  samples' targets **and history items** (:class:`fairbench.data.protocols.SequentialProtocol`), so an
  item counts once per user whose training windows contain it; under the general protocol, its training
  interactions;
- ``targets``: how often item i is the target of a training sample (``data.samples["train"].target``;
  with sliding windows every interaction but each user's first is one sample's target; a few-shot subset
  counts only the samples kept). Needs the sequential protocol.

Scores are the counts as float32 (exact up to 2^24). Ties are broken by the evaluator's rule (lower item
index first: :func:`fairbench.metrics.full_ranking_topk`), so the ranking is deterministic. No trainable
parameters: ``needs_training = False`` and the trainer skips fitting.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import numpy as np
import torch

from fairbench.data.types import InteractionData
from fairbench.errors import UserError
from fairbench.models.base import Batch, Recommender
from fairbench.models.sasrec import check_interaction_data, sequential_samples_length

POPULARITY = ("interactions", "targets")


def popularity_counts(data: InteractionData, popularity: str) -> np.ndarray:
    """Counts c_i, int64 [I], of ``popularity`` ("interactions" or "targets"; see the module docstring)."""
    if popularity == "interactions":
        return data.train_counts()  # column sums of the binary training matrix
    sequential_samples_length(data, "model.popularity=targets")
    return np.bincount(data.samples["train"].target, minlength=data.n_items).astype(np.int64)


class MostPop(Recommender):
    """Training popularity as the score of every item, for every row (see the module docstring)."""

    batch_unit = "sample"
    needs_training = False

    def __init__(
        self, data: InteractionData, popularity: Literal["interactions", "targets"] = "interactions"
    ) -> None:
        super().__init__()
        data = check_interaction_data(data, "MostPop")
        if popularity not in POPULARITY:
            raise UserError(f"model.popularity must be one of {list(POPULARITY)}, got {popularity!r}")
        self.popularity = popularity
        self.n_items = data.n_items
        counts = torch.from_numpy(popularity_counts(data, popularity)).to(torch.float32)
        self.register_buffer("counts", counts, persistent=False)

    def sample_losses(self, batch: Batch) -> torch.Tensor:
        raise RuntimeError("MostPop has nothing to train (needs_training = False)")

    def score_histories(self, history: torch.Tensor) -> torch.Tensor:
        """Counts [B, I], the same row for every history [B, L]."""
        return self.counts.expand(history.shape[0], self.n_items).clone()

    def scorer(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """Counts [B, I] for user indices [B] (the general protocol's rows)."""
        return lambda users: self.counts.expand(users.shape[0], self.n_items).clone()
