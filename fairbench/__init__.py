"""fairbench: item-side fairness experiments for LLM-based and LLM-enhanced recommenders."""

__version__ = "0.1.0"
