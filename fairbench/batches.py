"""Batch sources: what one training sample is, chosen by the model's ``batch_unit``.

- ``pair`` (:class:`PairBatches`): one (user, positive item) training interaction, with ``num_negatives``
  uniformly sampled negatives per pair (``neg_items``) when the model asks for them;
- ``user`` (:class:`UserBatches`): one user with all its training items (MultVAE); batches carry ``users``;
- ``sample`` (:class:`SampleBatches`): one next-item sample of the sequential protocol; batches carry
  ``users``, ``history`` [B, L] (left-padded with -1) and the target as ``pos_items``, plus ``sample_index``
  (row of ``data.samples["train"]``) for models that keep per-sample data of their own (tokenised prompts).

Every source exposes the positive item of each sample (``sample_items``, for group labels and methods that
count items; None for whole users) and, for interactions, their timestamps. The trainer draws the sample
order and a source's own randomness (negatives) from the epoch's generator, so batches are a function of
(seed, epoch) alone.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch

from fairbench.data.types import SequentialSamples
from fairbench.errors import UserError
from fairbench.models.base import Batch


class NegativeSampler:
    """Uniform negatives excluding each user's training items, by vectorised rejection sampling.

    A candidate (u, i) is rejected when it is a training pair; rejected slots are redrawn until none is left
    (AlphaRec samples negatives uniformly outside the user's items). Membership is looked up in a dense
    [U, I] bitmap when that fits in ``dense_limit`` cells, else by binary search over the sorted keys u*I + i.
    """

    def __init__(self, train: sp.csr_matrix, max_rounds: int = 100, dense_limit: int = 1 << 26) -> None:
        coo = train.tocoo()
        n_users, self.n_items = train.shape
        self.max_rounds = max_rounds
        self.dense: torch.Tensor | None = None
        if n_users * self.n_items <= dense_limit:
            self.dense = torch.zeros(n_users, self.n_items, dtype=torch.bool)
            self.dense[
                torch.from_numpy(coo.row.astype(np.int64)), torch.from_numpy(coo.col.astype(np.int64))
            ] = True
        keys = coo.row.astype(np.int64) * self.n_items + coo.col.astype(np.int64)
        self.keys = torch.from_numpy(np.sort(keys))

    def is_training_pair(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        if self.dense is not None:
            return self.dense[users, items]
        keys = users * self.n_items + items
        position = torch.searchsorted(self.keys, keys).clamp_(max=len(self.keys) - 1)
        return self.keys[position] == keys

    def sample(self, users: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
        """Negatives [B, n] for users [B]."""
        negatives = torch.randint(0, self.n_items, (len(users), n), generator=generator)
        flat = negatives.view(-1)
        owners = users.repeat_interleave(n)
        pending = torch.arange(flat.numel())
        for _ in range(self.max_rounds):
            pending = pending[self.is_training_pair(owners[pending], flat[pending])]
            if pending.numel() == 0:
                break
            flat[pending] = torch.randint(0, self.n_items, (pending.numel(),), generator=generator)
        return negatives


class BatchSource:
    """Training samples of one kind; :meth:`batch` builds the batch of the samples at ``index``."""

    unit: str
    n_samples: int
    batch_size: int
    #: [N] positive item of every sample (None: samples are whole users)
    sample_items: torch.Tensor | None = None
    #: [N] float64 time of every sample's interaction (None: not interactions, or no timestamps)
    sample_timestamps: torch.Tensor | None = None

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n_samples / self.batch_size)

    def batch(self, index: torch.Tensor, generator: torch.Generator) -> Batch:
        raise NotImplementedError


class PairBatches(BatchSource):
    """(user, positive) training pairs in the order of ``train.indices``, with sampled negatives."""

    unit = "pair"

    def __init__(
        self,
        train: sp.csr_matrix,
        batch_size: int,
        num_negatives: int = 0,
        timestamps: np.ndarray | None = None,
    ) -> None:
        coo = train.tocoo()
        self.users = torch.from_numpy(coo.row.astype(np.int64))
        self.sample_items = torch.from_numpy(coo.col.astype(np.int64))
        self.n_samples, self.batch_size, self.num_negatives = len(self.users), batch_size, num_negatives
        self.sampler = NegativeSampler(train) if num_negatives > 0 else None
        if timestamps is not None:
            self.sample_timestamps = torch.from_numpy(np.asarray(timestamps, dtype=np.float64))

    def batch(self, index: torch.Tensor, generator: torch.Generator) -> Batch:
        users = self.users[index]
        batch: Batch = {"users": users, "pos_items": self.sample_items[index]}
        if self.sampler is not None:
            batch["neg_items"] = self.sampler.sample(users, self.num_negatives, generator)
        return batch


class UserBatches(BatchSource):
    """Every user with at least one training item is one sample."""

    unit = "user"

    def __init__(self, train: sp.csr_matrix, batch_size: int) -> None:
        self.users = torch.from_numpy(np.flatnonzero(train.getnnz(axis=1) > 0).astype(np.int64))
        self.n_samples, self.batch_size = len(self.users), batch_size

    def batch(self, index: torch.Tensor, generator: torch.Generator) -> Batch:
        return {"users": self.users[index]}


class SampleBatches(BatchSource):
    """Next-item training samples (sequential protocol): history [B, L] and target (``pos_items``)."""

    unit = "sample"

    def __init__(self, samples: SequentialSamples, batch_size: int) -> None:
        self.users = torch.from_numpy(samples.user.astype(np.int64))
        self.history = torch.from_numpy(samples.history.astype(np.int64))
        self.sample_items = torch.from_numpy(samples.target.astype(np.int64))
        self.n_samples, self.batch_size = len(self.users), batch_size

    def batch(self, index: torch.Tensor, generator: torch.Generator) -> Batch:
        return {
            "users": self.users[index],
            "history": self.history[index],
            "pos_items": self.sample_items[index],
            "sample_index": index,
        }


def batch_source(
    unit: str,
    batch_size: int,
    train: sp.csr_matrix,
    *,
    num_negatives: int = 0,
    timestamps: np.ndarray | None = None,
    samples: SequentialSamples | None = None,
) -> BatchSource:
    """The batch source of a model's ``batch_unit``."""
    if unit == "pair":
        return PairBatches(train, batch_size, num_negatives, timestamps)
    if unit == "user":
        return UserBatches(train, batch_size)
    if unit == "sample":
        if samples is None or len(samples) == 0:
            raise UserError(
                "this model trains on next-item samples, which only the sequential protocol builds: "
                "add dataset/protocol=sequential (or use a dataset with its own samples, e.g. bigrec_csv)"
            )
        return SampleBatches(samples, batch_size)
    raise ValueError(f"unknown batch_unit {unit!r}")
