"""Beam search for generative recommendation, free or constrained to catalogue titles by a prefix trie.

Free decoding follows BIGRec ``inference.py``: deterministic beam search with 4 beams, all beams returned
(``num_return_sequences = num_beams``), ``max_new_tokens`` 128, KV cache on, prompts left-padded; the text
of a beam is its generated tokens decoded without special tokens (BIGRec decodes the whole sequence and
splits on "Response:\\n", which gives the same text).

The prompts are run through the model once and their KV cache is copied to each beam
(:func:`prefill_once`), instead of ``generate``'s default of expanding the prompts ``num_beams`` times before
the first forward pass; the beams are the same (same tokens, scores equal to float rounding) and the prompt
is encoded once instead of ``num_beams`` times, which is most of the cost of short generations.

Constrained decoding (not in BIGRec; as MSL and D3 do): the catalogue's responses (quoted titles) are
tokenised *in context*, i.e. as they appear after the prompt's ``### Response:\\n``
(:func:`fairbench.data.instructions.response_token_ids`), followed by EOS, and stored in a prefix trie;
``prefix_allowed_tokens_fn`` lets a beam continue only along the trie, so every finished beam is a catalogue
response (closing quote and EOS included).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fairbench.errors import UserError

if TYPE_CHECKING:
    import torch


class TitleTrie:
    """Prefix trie over token sequences; each complete sequence ends with EOS and records its item indices."""

    def __init__(self, sequences: Sequence[Sequence[int]], eos_token_id: int) -> None:
        """``sequences[i]`` are the in-context tokens of item i's response (without EOS; it is appended)."""
        self.eos_token_id = int(eos_token_id)
        self.root: dict[int, dict] = {}
        self._items: dict[tuple[int, ...], list[int]] = {}
        for item, tokens in enumerate(sequences):
            path = tuple(int(t) for t in tokens) + (self.eos_token_id,)
            node = self.root
            for token in path:
                node = node.setdefault(token, {})
            self._items.setdefault(path, []).append(item)
        self._allowed_cache: dict[tuple[int, ...], list[int]] = {}

    def __len__(self) -> int:
        return len(self._items)

    def allowed(self, prefix: Sequence[int]) -> list[int]:
        """Tokens that may follow ``prefix`` (the generated tokens); ``[]`` when it left the trie or ended."""
        key = tuple(int(t) for t in prefix)
        cached = self._allowed_cache.get(key)
        if cached is not None:
            return cached
        node = self.root
        for token in key:
            node = node.get(token)
            if node is None:
                break
        allowed = sorted(node) if node is not None else []
        self._allowed_cache[key] = allowed
        return allowed

    def items(self, tokens: Sequence[int]) -> list[int]:
        """Item indices whose response is exactly ``tokens`` (EOS optional; trailing padding ignored)."""
        path = [int(t) for t in tokens]
        if self.eos_token_id in path:
            path = path[: path.index(self.eos_token_id)]
        return list(self._items.get((*path, self.eos_token_id), []))


def build_title_trie(tokenizer: Any, responses: Sequence[str], context: str | None = None) -> TitleTrie:
    """Trie of the catalogue's responses (``'"Toy Story (1995)"'``, one per item) tokenised in context."""
    from fairbench.data.instructions import RESPONSE_CONTEXT, response_token_ids

    if not len(responses):
        raise UserError("constrained decoding needs at least one catalogue title.")
    tokens = response_token_ids(tokenizer, responses, RESPONSE_CONTEXT if context is None else context)
    return TitleTrie(tokens, tokenizer.eos_token_id)


def prefix_allowed_tokens_fn(trie: TitleTrie, prompt_width: int) -> Callable[[int, torch.Tensor], list[int]]:
    """The ``generate`` hook: tokens allowed after a beam's generated tokens ``input_ids[prompt_width:]``.

    Prompts are left-padded to ``prompt_width`` columns, so generation starts at the same column in every row.
    Off the trie (cannot happen while the hook is in place) only EOS is allowed, which ends the beam.
    """
    eos = [trie.eos_token_id]

    def allowed(batch_id: int, input_ids: torch.Tensor) -> list[int]:
        return trie.allowed(input_ids[prompt_width:].tolist()) or eos

    return allowed


def prefill_once(
    model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, num_beams: int
) -> dict[str, Any]:
    """The KV cache of every prompt but its last token, repeated for each beam, as a ``generate`` keyword.

    Position ids follow ``generate``'s rule for left padding (cumulative count of real tokens - 1), so the
    cached keys equal those ``generate`` would compute itself; ``generate`` then feeds only the last prompt
    token. Returns ``{}`` (plain ``generate``) for a single beam, one-token prompts or models without a cache.
    """
    import torch

    if num_beams < 2 or input_ids.shape[1] < 2:
        return {}
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        out = model(
            input_ids=input_ids[:, :-1],
            attention_mask=attention_mask[:, :-1],
            position_ids=positions[:, :-1],
            use_cache=True,
        )
    # transformers >= 5 names it ``cache`` (``past_key_values`` deprecated there); 4.x only the latter
    name = "cache" if getattr(out, "cache", None) is not None else "past_key_values"
    cache = getattr(out, name, None)
    if cache is None or not hasattr(cache, "batch_repeat_interleave"):
        return {}
    cache.batch_repeat_interleave(num_beams)
    return {name: cache}


@dataclass
class Beams:
    """Beam-search output: texts[n][b] is beam b of sample n (best first); scores as ``generate`` reports them
    (length-normalised sum of log-probabilities); tokens[n][b] the generated ids without padding."""

    texts: list[list[str]]
    scores: np.ndarray  # float32 [n, num_beams]
    tokens: list[list[list[int]]]


def beam_search(
    model: Any,
    tokenizer: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    num_beams: int = 4,
    max_new_tokens: int = 128,
    trie: TitleTrie | None = None,
    length_penalty: float = 1.0,
    prefill: bool = True,
) -> Beams:
    """Deterministic beam search over one left-padded batch of prompts; all ``num_beams`` beams per sample.

    ``trie`` constrains every beam to catalogue responses. No sampling (``do_sample=False``), so the result is
    a function of the model and the prompts; the model is put in eval mode for the call. ``prefill``: encode
    the prompts once for all beams (:func:`prefill_once`); False is ``generate``'s own expansion.
    """
    import torch

    from fairbench.backbones.causal_lm import eval_mode
    from fairbench.models.grounding import model_device

    if isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams < 1:
        raise UserError(f"model.num_beams must be an integer >= 1, got {num_beams!r}.")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise UserError(f"model.max_new_tokens must be an integer >= 1, got {max_new_tokens!r}.")
    if bool((attention_mask[:, -1] == 0).any()):
        raise ValueError("beam_search needs left-padded prompts (every row's last column must be a token)")
    width = input_ids.shape[1]
    device = model_device(model)
    kwargs: dict[str, Any] = {
        "input_ids": input_ids.to(device),
        "attention_mask": attention_mask.to(device),
        "do_sample": False,
        "num_beams": num_beams,
        "num_return_sequences": num_beams,
        "max_new_tokens": max_new_tokens,
        "length_penalty": length_penalty,
        "early_stopping": False,
        "use_cache": True,
        "return_dict_in_generate": True,
        "output_scores": True,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "temperature": None,
        "top_p": None,
        "top_k": None,
    }
    if trie is not None:
        kwargs["prefix_allowed_tokens_fn"] = prefix_allowed_tokens_fn(trie, width)
    with eval_mode(model), torch.inference_mode():
        if prefill:
            kwargs |= prefill_once(model, kwargs["input_ids"], kwargs["attention_mask"], num_beams)
        out = model.generate(**kwargs)
    generated = out.sequences[:, width:].cpu()
    n = input_ids.shape[0]
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    # generated tokens up to (excluding) the first EOS; pad = EOS for many models, so cut at the first EOS
    is_end = generated == eos
    if pad is not None and pad != eos:
        is_end |= generated == pad
    has_end = is_end.any(dim=1)
    stop = torch.where(
        has_end, is_end.int().argmax(dim=1), torch.full_like(has_end, generated.shape[1], dtype=torch.long)
    )
    rows = generated.tolist()
    stops = stop.tolist()
    tokens = [row[:s] for row, s in zip(rows, stops, strict=True)]
    texts = tokenizer.batch_decode(tokens, skip_special_tokens=True)
    scores = (
        out.sequences_scores.float().cpu().numpy()
        if getattr(out, "sequences_scores", None) is not None
        else np.zeros(n * num_beams, dtype=np.float32)
    )
    return Beams(
        texts=[texts[i * num_beams : (i + 1) * num_beams] for i in range(n)],
        scores=scores.reshape(n, num_beams),
        tokens=[tokens[i * num_beams : (i + 1) * num_beams] for i in range(n)],
    )
