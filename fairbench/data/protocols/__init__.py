"""Data protocols: turn a source's raw interactions into train / valid / test matrices and samples.

A protocol is a ``_target_`` config node (``dataset.protocol``, chosen with ``dataset/protocol=general`` or
``dataset/protocol=sequential``); its fields are its config keys and :meth:`SplitProtocol.cache_key` keys
the processed-data cache. :class:`GeneralProtocol` is the BiFair / AlphaRec protocol (METHODS.md 1.1),
:class:`SequentialProtocol` the BIGRec / IFairLRS one (1.2). Both give what both model families need: the
user x item matrices, next-item samples per split, the item table and training popularity.
"""

from fairbench.data.protocols.common import (
    SplitProtocol,
    build_csr,
    check_ratios,
    check_thresholds,
    encode,
    kcore_filter,
    natural_sorted_ids,
    rating_filter,
    split_bounds,
)
from fairbench.data.protocols.general import GeneralProtocol, general_samples, split_labels
from fairbench.data.protocols.sequential import SequentialProtocol

__all__ = [
    "GeneralProtocol",
    "SequentialProtocol",
    "SplitProtocol",
    "build_csr",
    "check_ratios",
    "check_thresholds",
    "encode",
    "general_samples",
    "kcore_filter",
    "natural_sorted_ids",
    "rating_filter",
    "split_bounds",
    "split_labels",
]
