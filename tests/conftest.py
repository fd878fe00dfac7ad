"""Settings every test shares. Helpers live in tests/helpers/ (imported as ``tests.helpers.*``)."""

from __future__ import annotations

import os

# In-process runs log to wandb offline only; the CLI tests set the same for their subprocesses.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

# Fixtures shared by several test files (tiny causal LMs with the real SmolLM2 tokenizer).
pytest_plugins = ["tests.helpers.tiny_lm"]
