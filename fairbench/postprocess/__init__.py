"""Post-processing: rerankers fitted on the validation ranking and applied to the test ranking.

Config group ``postprocess`` (``conf/postprocess/``); ``none`` (the default) keeps the model's lists.
"""

from fairbench.postprocess.base import PostProcessor
from fairbench.postprocess.none import KeepRanking

__all__ = ["KeepRanking", "PostProcessor"]
