"""BIGRec instruction data: Alpaca prompts from sequential samples, tokenised once, batched without loops.

Prompt (BIGRec ``train.py`` / ``inference.py`` ``generate_prompt``; ``data/movie/process.ipynb``)::

    Below is an instruction that describes a task, paired with an input that provides further context. Write a
    response that appropriately completes the request. \\n\\n### Instruction:\\n{instruction}\\n\\n
    ### Input:\\n{input}\\n\\n### Response:\\n

with input = ``The user has watched the following movies before:"T1", "T2", ...`` + ``"\\n "`` (history
oldest first, padding skipped; process.ipynb ends every input with a newline and a space) and response = the
quoted target title ``"T"``. BIGRec's training prompt has one space after "request." and its inference prompt
two; fairbench uses the **training** prompt (one space) for both, so the fine-tuned model is prompted at
inference exactly as it was trained.

Tokenisation (:func:`tokenize_instructions`) follows BIGRec ``train.py``: the full text prompt + response is
tokenised with the tokenizer's special tokens, truncated to ``cutoff_len`` tokens, and EOS is appended when
it fits; labels are the input ids with the prompt tokens set to -100 unless ``train_on_inputs`` (BIGRec runs
with ``train_on_inputs=True``; fairbench's default is False: the loss covers the response and EOS only).
The prompt's tokens must be a prefix of the full text's tokens (true for the tokenizers in use, since the
prompt ends with a newline); the same prompt tokens start every generation.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fairbench.backbones.templates import render_item_texts, template_fields
from fairbench.data.types import SequentialSamples
from fairbench.errors import UserError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

ALPACA_HEADER = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request. "
)
"""BIGRec ``train.py`` preamble (one space after "request."; ``inference.py`` has two)."""

RESPONSE_CONTEXT = "\n\n### Response:\n"
"""The end of every prompt; responses are tokenised after it (in context), see :func:`response_token_ids`."""

PROMPT_FORMAT = (
    ALPACA_HEADER + "\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}" + RESPONSE_CONTEXT
)

IGNORE_INDEX = -100
"""Label of a token that does not count in the loss (PyTorch's cross-entropy default)."""


@dataclass(frozen=True)
class PromptTemplate:
    """What varies per dataset family: the instruction, the history sentence and how an item is written.

    ``item`` is a format string over item columns (``"{title}"``, ``"{title} ({year})"``); each item is
    written as ``quote + item + quote`` and history items are joined with ``separator``.
    """

    instruction: str
    history_prefix: str
    item: str = "{title}"
    quote: str = '"'
    separator: str = ", "
    input_suffix: str = "\n "


FAMILIES: dict[str, PromptTemplate] = {
    # BIGRec data/movie/process.ipynb
    "movie": PromptTemplate(
        instruction="Given a list of movies the user has watched before, please recommend a new movie that "
        "the user likes to the user.",
        history_prefix="The user has watched the following movies before:",
    ),
    # BIGRec data/game/process.ipynb
    "game": PromptTemplate(
        instruction="Given a list of video games the user has played before, please recommend a new video "
        "game that the user likes to the user.",
        history_prefix="The user has played the following video games before:",
    ),
    # not in BIGRec: the same sentences for books (fairbench's wording)
    "book": PromptTemplate(
        instruction="Given a list of books the user has read before, please recommend a new book that the "
        "user likes to the user.",
        history_prefix="The user has read the following books before:",
    ),
    # not in BIGRec: any other catalogue (fairbench's wording)
    "item": PromptTemplate(
        instruction="Given a list of items the user has interacted with before, please recommend a new item "
        "that the user likes to the user.",
        history_prefix="The user has interacted with the following items before:",
    ),
}
"""Prompt templates per dataset family (``movie`` for MovieLens / Amazon Movies, ``game`` for Amazon Games /
Steam, ``book`` for Amazon Books, ``item`` otherwise)."""


def prompt_template(family: str, **overrides: Any) -> PromptTemplate:
    """The template of a family with some fields replaced (e.g. ``item="{title} ({year})"``)."""
    if family not in FAMILIES:
        raise UserError(f"model.prompt.family={family!r} is unknown; choose one of {sorted(FAMILIES)}.")
    unknown = sorted(set(overrides) - set(PromptTemplate.__dataclass_fields__))
    if unknown:
        raise UserError(
            f"model.prompt: unknown key(s) {unknown}; allowed: {sorted(PromptTemplate.__dataclass_fields__)}."
        )
    fields = {**FAMILIES[family].__dict__, **{k: v for k, v in overrides.items() if v is not None}}
    return PromptTemplate(**fields)


def item_texts(items: pd.DataFrame, template: str = "{title}", key: str = "model.prompt.item") -> np.ndarray:
    """One text per item row (object array [I]): ``template`` over the item columns it names.

    An unknown column is a UserError listing the valid ones; so is an item whose text comes out empty.
    """
    names = [name for name in template_fields(template) if name not in items.columns]
    if names:
        raise UserError(
            f"{key}={template!r} names unknown item column(s) {names}; valid columns: "
            f"{', '.join(map(str, items.columns))}."
        )
    texts = np.asarray(render_item_texts(items, template), dtype=object)
    empty = np.flatnonzero([not t.strip() for t in texts])
    if len(empty):
        raise UserError(
            f"{key}={template!r} gives an empty text for {len(empty)} item(s) (first: row {int(empty[0])}); "
            "the generative path needs a title for every item."
        )
    return texts


def build_prompts(samples: SequentialSamples, texts: np.ndarray, template: PromptTemplate) -> list[str]:
    """The Alpaca prompt of every sample (ends with ``### Response:\\n``), history oldest first."""
    quoted = np.asarray([template.quote + t + template.quote for t in texts], dtype=object)
    history = np.asarray(samples.history)
    lengths = samples.lengths()
    width = history.shape[1]
    sep = template.separator
    inputs = [
        template.history_prefix + sep.join(quoted[row[width - n :]]) + template.input_suffix
        for row, n in zip(history, lengths, strict=True)
    ]
    instruction = template.instruction
    return [PROMPT_FORMAT.format(instruction=instruction, input=text) for text in inputs]


def build_responses(targets: np.ndarray, texts: np.ndarray, template: PromptTemplate) -> list[str]:
    """The quoted title of each target item: ``"T"``."""
    return [template.quote + t + template.quote for t in texts[np.asarray(targets, dtype=np.int64)]]


def _flatten(rows: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """Token-id lists -> (concatenation int64 [sum len], lengths int64 [n])."""
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    flat = np.fromiter((t for r in rows for t in r), dtype=np.int64, count=int(lengths.sum()))
    return flat, lengths


def _starts(lengths: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if len(lengths) else lengths


def _positions(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row of each flat element, position of the element within its row)."""
    row = np.repeat(np.arange(len(lengths)), lengths)
    return row, np.arange(int(lengths.sum())) - np.repeat(_starts(lengths), lengths)


@dataclass
class TokenizedInstructions:
    """All samples' token ids, concatenated: sample n is ``input_ids[offsets[n]:offsets[n + 1]]``.

    ``labels`` has the same layout (-100 where a token does not count in the loss); the first
    ``prompt_lengths[n]`` tokens of sample n are its prompt (what generation starts from). ``truncated[n]``
    is True when the full text was cut at the cutoff length.
    """

    input_ids: np.ndarray  # int64 [total]
    labels: np.ndarray  # int64 [total]
    offsets: np.ndarray  # int64 [n + 1]
    prompt_lengths: np.ndarray  # int64 [n]
    truncated: np.ndarray  # bool [n]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per sample, int64 [n]."""
        return np.diff(self.offsets)

    def sample(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(input ids, labels) of sample n."""
        lo, hi = self.offsets[n], self.offsets[n + 1]
        return self.input_ids[lo:hi], self.labels[lo:hi]


def tokenize_instructions(
    tokenizer: Any,
    prompts: Sequence[str],
    responses: Sequence[str],
    cutoff_len: int = 512,
    train_on_inputs: bool = False,
    add_eos: bool = True,
) -> TokenizedInstructions:
    """Tokenise prompt + response of every sample in two batched tokenizer calls (BIGRec ``train.py``).

    ids = tok(prompt + response)[:cutoff_len], then EOS appended when ``add_eos``, the last token is not
    already EOS and fewer than ``cutoff_len`` tokens remain (as BIGRec's ``tokenize``); labels = ids with
    positions < len(tok(prompt)) set to -100 unless ``train_on_inputs``.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts for {len(responses)} responses")
    if isinstance(cutoff_len, bool) or not isinstance(cutoff_len, int) or cutoff_len < 2:
        raise UserError(f"model.cutoff_len must be an integer >= 2, got {cutoff_len!r}.")
    full_flat, full_len = _flatten(
        tokenizer([p + r for p, r in zip(prompts, responses, strict=True)], padding=False)["input_ids"]
    )
    prompt_flat, prompt_len = _flatten(tokenizer(list(prompts), padding=False)["input_ids"])
    full_start = _starts(full_len)
    # the prompt's tokens must be a prefix of the full text's tokens
    row, pos = _positions(prompt_len)
    inside = pos < full_len[row]
    src = full_start[row] + np.minimum(pos, np.maximum(full_len[row] - 1, 0))
    bad = ~inside | (full_flat[src] != prompt_flat) if len(prompt_flat) else np.zeros(0, dtype=bool)
    if bad.any():
        first = int(row[np.argmax(bad)])
        raise UserError(
            f"the tokenizer merges the end of the prompt with the response for {len(np.unique(row[bad]))} "
            f"sample(s) (first: sample {first}), so prompt and response cannot be separated; use a backbone "
            "whose tokenizer splits after a newline."
        )
    kept = np.minimum(full_len, cutoff_len)
    row, pos = _positions(full_len)
    kept_flat = full_flat[pos < kept[row]]
    eos = tokenizer.eos_token_id
    last = kept_flat[_starts(kept) + kept - 1] if len(kept_flat) else np.zeros(len(kept), dtype=np.int64)
    append = (kept < cutoff_len) & (kept > 0) & (last != eos) if add_eos else np.zeros(len(kept), dtype=bool)
    if add_eos:
        append |= kept == 0
    out_len = kept + append
    offsets = np.concatenate([[0], np.cumsum(out_len)]).astype(np.int64)
    input_ids = np.empty(int(offsets[-1]), dtype=np.int64)
    row, pos = _positions(kept)
    input_ids[offsets[:-1][row] + pos] = kept_flat
    input_ids[offsets[:-1][append] + kept[append]] = eos
    labels = input_ids.copy()
    prompt_kept = np.minimum(prompt_len, out_len)
    if not train_on_inputs:
        row, pos = _positions(out_len)
        labels[pos < prompt_kept[row]] = IGNORE_INDEX
    truncated = full_len > kept
    if truncated.any():
        log.warning(
            "%d of %d instruction samples exceed cutoff_len=%d tokens and were truncated",
            int(truncated.sum()),
            len(kept),
            cutoff_len,
        )
    return TokenizedInstructions(input_ids, labels, offsets, prompt_kept.astype(np.int64), truncated)


def response_token_ids(
    tokenizer: Any, responses: Sequence[str], context: str = RESPONSE_CONTEXT
) -> list[list[int]]:
    """Token ids of each response as it appears after ``context`` (in context, as MSL / D3 build their tries):
    tok(context + response) with the tokens of tok(context) removed from the front."""
    head = tokenizer(context, padding=False)["input_ids"]
    rows = tokenizer([context + r for r in responses], padding=False)["input_ids"]
    bad = [i for i, r in enumerate(rows) if r[: len(head)] != head]
    if bad:
        raise UserError(
            f"the tokenizer merges {context!r} with the response for {len(bad)} item(s) (first: "
            f"{responses[bad[0]]!r}); use a backbone whose tokenizer splits after a newline."
        )
    return [r[len(head) :] for r in rows]


def _pad_width(width: int, multiple: int | None) -> int:
    return width if not multiple else -(-width // multiple) * multiple


def training_batch(
    data: TokenizedInstructions,
    indices: np.ndarray | Sequence[int],
    pad_id: int,
    pad_to_multiple_of: int | None = None,
) -> dict[str, torch.Tensor]:
    """Right-padded batch: input_ids, attention_mask [B, T] and labels [B, T] (-100 at padding), int64."""
    import torch

    idx = np.asarray(indices, dtype=np.int64)
    lengths = data.lengths[idx]
    width = _pad_width(int(lengths.max()), pad_to_multiple_of)
    column = np.arange(width)[None, :]
    valid = column < lengths[:, None]
    src = np.where(valid, data.offsets[idx][:, None] + column, 0)
    ids = np.where(valid, data.input_ids[src], pad_id)
    labels = np.where(valid, data.labels[src], IGNORE_INDEX)
    return {
        "input_ids": torch.from_numpy(ids),
        "attention_mask": torch.from_numpy(valid.astype(np.int64)),
        "labels": torch.from_numpy(labels),
    }


def generation_batch(
    data: TokenizedInstructions, indices: np.ndarray | Sequence[int], pad_id: int
) -> dict[str, torch.Tensor]:
    """Left-padded prompts (the first ``prompt_lengths`` tokens of each sample): input_ids, attention_mask."""
    import torch

    idx = np.asarray(indices, dtype=np.int64)
    lengths = data.prompt_lengths[idx]
    width = int(lengths.max())
    column = np.arange(width)[None, :]
    shift = (width - lengths)[:, None]
    valid = column >= shift
    src = np.where(valid, data.offsets[idx][:, None] + column - shift, 0)
    ids = np.where(valid, data.input_ids[src], pad_id)
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(valid.astype(np.int64))}
