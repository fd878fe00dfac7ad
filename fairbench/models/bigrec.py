"""BIGRec (Bao et al., "A Bi-Step Grounding Paradigm for Large Language Models in Recommendation Systems",
2023; public code SAI990323/BIGRec): a causal LM fine-tuned with LoRA on instruction prompts writes the next
item's title, which is grounded to real items by embedding distance (METHODS.md 3).

Step 1, fine-tuning (``train.py``): one Alpaca prompt per next-item sample of the sequential protocol
(:mod:`fairbench.data.instructions`), response = the quoted target title + EOS; LoRA on the attention
projections; per-sample losses = token-mean cross-entropy of the response
(:func:`fairbench.backbones.causal_lm.sequence_losses`), so every loss-combining fairness method weights
them. Early stopping on the validation loss (:meth:`BIGRec.validation_loss`, ``trainer.monitor=loss``).
Per-token losses (:meth:`BIGRec.token_losses`) and target-token log-probabilities with or without the user's
history in the prompt (:meth:`BIGRec.target_log_probs`), under the trained adapter or a reference model
(:meth:`BIGRec.reference_model`), serve GDRT (:mod:`fairbench.methods.gdrt`) and the language-bias diagnostic
(:mod:`fairbench.analysis.language_bias`).

Step 2, generation and grounding (``inference.py``, ``data/movie/evaluate.py``): deterministic beam search
(:func:`fairbench.models.decoding.beam_search`); the first beam's text (quotes stripped) is embedded by the
*base* model (adapters disabled; last layer, last token) and all items are ranked by L2 distance to the
item-title vectors of the same base model (cached like any backbone's vectors,
:func:`fairbench.models.grounding.ground_topk`). With ``decoding=constrained`` beams can only spell catalogue
titles (a prefix trie, as MSL / D3 do; not in BIGRec): the items of the beams come first, in beam order, and
grounding of the first beam fills the remaining ranks.

The ranking carries the generated texts' vectors, so ``postprocess=popularity_grounding`` can re-ground with
BIGRec's popularity adjustment (``adjust_pda.py``) and a gamma chosen on validation. The trainable state is
the LoRA adapter alone (checkpoints hold it, not the LLM).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from fairbench.backbones.causal_lm import (
    CausalLMBackbone,
    LoRASettings,
    adapter_state_dict,
    adapters_disabled,
    eval_mode,
    load_adapter_state_dict,
    sequence_losses,
    shared_prompt_log_probs,
    token_cross_entropy,
)
from fairbench.data.instructions import (
    ALPACA_HEADER,
    RESPONSE_CONTEXT,
    PromptTemplate,
    TokenizedInstructions,
    build_prompts,
    build_responses,
    generation_batch,
    item_texts,
    prompt_template,
    tokenize_instructions,
    training_batch,
)
from fairbench.data.types import InteractionData, SequentialSamples
from fairbench.errors import UserError
from fairbench.models.base import Batch, Recommender
from fairbench.models.decoding import TitleTrie, beam_search, build_title_trie
from fairbench.models.grounding import ground_topk, last_token_embeddings

log = logging.getLogger(__name__)

AuxiliaryContext = Literal["empty_history", "no_input"]
"""The prompt without the user's history (GDRT's auxiliary context): ``empty_history`` keeps the whole prompt
with an empty history list (task description + history sentence); ``no_input`` drops the Input section."""


@dataclass
class Grounding:
    """What re-grounding a ranking needs: the generated texts' vectors [R, d] (base model), the item-title
    vectors [I, d] and the items' training popularity counts [I]."""

    queries: torch.Tensor
    item_vectors: torch.Tensor
    popularity: np.ndarray


class BIGRec(Recommender):
    """LoRA-tuned causal LM that writes a title, grounded to items by L2 distance (module docstring)."""

    batch_unit = "sample"
    uses_text_vectors = True  # the base model's item-title vectors, through the vector cache
    uses_causal_lm = True  # the pipeline hands over the loaded backbone (loaded once for all three steps)
    grounds_generations = True

    def __init__(
        self,
        data: InteractionData,
        lm: CausalLMBackbone,
        item_vectors: np.ndarray,
        family: Literal["movie", "game", "book", "item"] = "movie",
        item_template: str = "{title}",
        instruction: str | None = None,
        history_prefix: str | None = None,
        cutoff_len: int = 512,
        train_on_inputs: bool = False,
        lora: Mapping[str, Any] | None = None,
        num_beams: int = 4,
        max_new_tokens: int = 128,
        decoding: Literal["free", "constrained"] = "free",
        length_penalty: float = 1.0,
        generation_batch_size: int = 8,
        grounding_batch_size: int = 1024,
        loss_batch_size: int = 16,
    ) -> None:
        super().__init__()
        if not isinstance(lm, CausalLMBackbone):
            raise UserError(
                f"model=bigrec needs a causal LM backbone (backbone=smollm2-135m, or one whose encoder is "
                f"fairbench.backbones.causal_lm.CausalLMBackbone), got {type(lm).__name__}"
            )
        if decoding not in ("free", "constrained"):
            raise UserError(f"model.decoding must be free or constrained, got {decoding!r}")
        if isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float)):
            raise UserError(f"model.length_penalty must be a number, got {length_penalty!r}")
        self.length_penalty = float(length_penalty)
        for name, value in (
            ("generation_batch_size", generation_batch_size),
            ("grounding_batch_size", grounding_batch_size),
            ("loss_batch_size", loss_batch_size),
        ):
            if value < 1:
                raise UserError(f"model.{name} must be >= 1, got {value}")
        if not data.samples or "train" not in data.samples:
            raise UserError("model=bigrec trains on next-item samples: add dataset/protocol=sequential")
        if item_vectors.shape[0] != data.n_items:
            raise ValueError(f"item_vectors has {item_vectors.shape[0]} rows for {data.n_items} items")
        self.template: PromptTemplate = prompt_template(
            family, item=item_template, instruction=instruction, history_prefix=history_prefix
        )
        self.texts = item_texts(data.items, self.template.item)
        self.num_beams, self.max_new_tokens, self.decoding = num_beams, max_new_tokens, decoding
        self.generation_batch_size, self.grounding_batch_size = generation_batch_size, grounding_batch_size
        self.loss_batch_size, self.cutoff_len, self.train_on_inputs = (
            loss_batch_size,
            cutoff_len,
            train_on_inputs,
        )
        #: identity of the base LM (name, revision, dtype, quantisation): keys caches of its outputs
        self.backbone_fingerprint: str = lm.fingerprint
        self.lm = lm.attach_lora(LoRASettings(**dict(lora or {})))
        self.tokenizer = lm.tokenizer
        self.register_buffer(
            "item_vectors", torch.as_tensor(np.asarray(item_vectors, np.float32)), persistent=False
        )
        self.popularity = data.train_counts()
        self.samples = data.samples
        self.train_tokens = self.tokenize(data.samples["train"])
        valid = data.samples.get("valid")
        self.valid_tokens = self.tokenize(valid) if valid is not None and len(valid) else None
        self._trie: TitleTrie | None = None
        log.info(
            "bigrec: %d training prompts, %.0f tokens on average (%d truncated at %d)",
            len(self.train_tokens),
            float(self.train_tokens.lengths.mean()) if len(self.train_tokens) else 0.0,
            int(self.train_tokens.truncated.sum()),
            cutoff_len,
        )

    # ------------------------------------------------------------------------------------------- data

    def tokenize(self, samples: SequentialSamples) -> TokenizedInstructions:
        """Prompt + response tokens of every sample (responses = the targets' quoted titles)."""
        prompts = build_prompts(samples, self.texts, self.template)
        responses = build_responses(samples.target, self.texts, self.template)
        return tokenize_instructions(
            self.tokenizer, prompts, responses, self.cutoff_len, train_on_inputs=self.train_on_inputs
        )

    def prompts_of(self, history: np.ndarray, users: np.ndarray) -> TokenizedInstructions:
        """Prompt tokens only, for evaluation rows (histories [R, L]; no target is read)."""
        samples = SequentialSamples(
            user=users,
            history=history.astype(np.int32),
            target=np.zeros(len(users), np.int64),
            timestamp=np.zeros(len(users)),
        )
        prompts = build_prompts(samples, self.texts, self.template)
        return tokenize_instructions(
            self.tokenizer, prompts, [""] * len(prompts), self.cutoff_len, train_on_inputs=True, add_eos=False
        )

    # --------------------------------------------------------------------------------------- training

    def on_epoch_start(self, epoch: int, seed: int) -> None:
        """LoRA dropout draws from torch's global generator: reseed it per epoch with the trainer's
        (seed, epoch) seed, so a resumed run repeats the uninterrupted run's masks."""
        torch.manual_seed(seed)

    def parameter_sets(self) -> dict[str, list[nn.Parameter]]:
        return {"lora": [p for p in self.lm.parameters() if p.requires_grad]}

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return adapter_state_dict(self.lm)

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        load_adapter_state_dict(self.lm, state)

    def losses_of(self, tokens: TokenizedInstructions, index: np.ndarray) -> torch.Tensor:
        """Token-mean cross-entropy of each sample's response, [B] on the model's device."""
        batch = training_batch(tokens, index, self.tokenizer.pad_token_id)
        device = self.item_vectors.device
        return sequence_losses(
            self.lm,
            batch["input_ids"].to(device),
            batch["attention_mask"].to(device),
            batch["labels"].to(device),
        )

    def sample_losses(self, batch: Batch) -> torch.Tensor:
        return self.losses_of(self.train_tokens, batch["sample_index"].cpu().numpy())

    def token_losses(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token cross-entropy of each training sample's label tokens (response + EOS), left-aligned:
        (ce [B, T], mask [B, T]) (:func:`fairbench.backbones.causal_lm.token_cross_entropy`); the token-mean
        of row b over its mask is :meth:`sample_losses`' value."""
        batch_ = training_batch(
            self.train_tokens, batch["sample_index"].cpu().numpy(), self.tokenizer.pad_token_id
        )
        device = self.item_vectors.device
        return token_cross_entropy(
            self.lm,
            batch_["input_ids"].to(device),
            batch_["attention_mask"].to(device),
            batch_["labels"].to(device),
        )

    def validation_loss(self) -> float:
        """Mean per-sample response loss over the validation samples (BIGRec's early-stopping criterion)."""
        if self.valid_tokens is None:
            raise UserError(
                "model=bigrec selects on the validation loss, but the dataset has no valid samples"
            )
        total = 0.0
        with torch.inference_mode():
            for start in range(0, len(self.valid_tokens), self.loss_batch_size):
                index = np.arange(start, min(start + self.loss_batch_size, len(self.valid_tokens)))
                total += float(self.losses_of(self.valid_tokens, index).sum())
        return total / len(self.valid_tokens)

    # ------------------------------------------------------------------------- token-level analysis

    def split_tokens(self, split: str) -> TokenizedInstructions:
        """Prompt + response tokens of a split's samples (training and validation ones are kept)."""
        if split == "train":
            return self.train_tokens
        if split == "valid" and self.valid_tokens is not None:
            return self.valid_tokens
        if split not in (self.samples or {}) or not len(self.samples[split]):
            raise UserError(f"split {split!r} has no next-item samples; choose one of {sorted(self.samples)}")
        return self.tokenize(self.samples[split])

    def auxiliary_prompt(self, context: AuxiliaryContext = "empty_history") -> str:
        """The prompt with the user's history removed (the same text for every sample, see
        :data:`AuxiliaryContext`)."""
        t = self.template
        if context == "empty_history":
            return build_prompts(
                SequentialSamples(
                    user=np.zeros(1, np.int64),
                    history=np.full((1, 1), -1, np.int32),
                    target=np.zeros(1, np.int64),
                    timestamp=np.zeros(1),
                ),
                self.texts,
                t,
            )[0]
        if context == "no_input":
            return ALPACA_HEADER + f"\n\n### Instruction:\n{t.instruction}" + RESPONSE_CONTEXT
        raise UserError(f"the auxiliary context must be empty_history or no_input, got {context!r}")

    def target_log_probs(
        self, split: str, context: Literal["history"] | AuxiliaryContext = "history", limit: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """log p(y_t | prompt, y_<t) of every label token of the split's (first ``limit``) samples, under the
        current adapter state (wrap in :meth:`reference_model` for a reference model), in eval mode.

        Returns (flat float32 log-probs, tokens per sample int64 [n]), sample n's tokens in order, laid out
        as :meth:`token_losses` columns. ``context="history"``: the samples' own prompts. An auxiliary context
        (:data:`AuxiliaryContext`): the prompt without the history, the same for every sample, so each
        distinct target item is scored once and the prompt runs once per batch; a sample truncated at
        ``cutoff_len`` keeps the first of its response's tokens, as in its prompt with history.
        """
        tokens = self.split_tokens(split)
        n = len(tokens) if limit is None else min(limit, len(tokens))
        ids, counts = label_tokens(tokens, n)
        if context == "history":
            return self._log_probs(tokens, np.arange(n)), counts
        if self.train_on_inputs:
            raise UserError(
                "comparing target tokens with and without the history needs model.train_on_inputs=false "
                "(with true, the prompt's tokens are targets too)"
            )
        targets = self.split_targets(split)[:n]
        items, inverse = np.unique(targets, return_inverse=True)
        prompt = self.auxiliary_prompt(context)
        responses = build_responses(items, self.texts, self.template)
        aux = tokenize_instructions(
            self.tokenizer, [prompt] * len(items), responses, self.cutoff_len, train_on_inputs=False
        )
        aux_ids, aux_counts = label_tokens(aux, len(items))
        aux_lp = self._shared_prompt_log_probs(aux.input_ids[: aux.prompt_lengths[0]], aux_ids, aux_counts)
        # sample s takes the first counts[s] tokens of its item's response
        row = np.repeat(np.arange(n), counts)
        position = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
        aux_start = np.cumsum(aux_counts) - aux_counts
        if (counts > aux_counts[inverse]).any():
            raise UserError(
                f"{split} samples have more target tokens than their responses in the auxiliary prompt"
            )
        source = aux_start[inverse][row] + position
        if not np.array_equal(aux_ids[source], ids):
            raise UserError(
                "the tokenizer splits a response differently after the prompt without history; token-level "
                "comparisons need a backbone whose tokenizer splits after a newline"
            )
        return aux_lp[source], counts

    def split_targets(self, split: str) -> np.ndarray:
        """Target item of every sample of a split, int64 [n]."""
        return np.asarray(self.samples[split].target, dtype=np.int64)

    def _log_probs(self, tokens: TokenizedInstructions, index: np.ndarray) -> np.ndarray:
        """Flat log-probs of the label tokens of samples ``index`` (batches of ``loss_batch_size``)."""
        out = []
        device = self.item_vectors.device
        with torch.inference_mode(), eval_mode(self.lm):
            for start in range(0, len(index), self.loss_batch_size):
                part = index[start : start + self.loss_batch_size]
                batch = training_batch(tokens, part, self.tokenizer.pad_token_id)
                ce, mask = token_cross_entropy(
                    self.lm,
                    batch["input_ids"].to(device),
                    batch["attention_mask"].to(device),
                    batch["labels"].to(device),
                )
                out.append((-ce)[mask].float().cpu().numpy())
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)

    def _shared_prompt_log_probs(self, prompt: np.ndarray, ids: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Flat log-probs of token sequences (``ids`` flat, ``counts`` per row) that all follow ``prompt``,
        the prompt run once per batch (:func:`~fairbench.backbones.causal_lm.shared_prompt_log_probs`)."""
        out = []
        device = self.item_vectors.device
        starts = np.cumsum(counts) - counts
        prompt_ids = torch.as_tensor(prompt, device=device)
        step = 4 * self.loss_batch_size  # rows are short (a title): larger batches than for whole prompts
        with torch.inference_mode(), eval_mode(self.lm):
            for lo in range(0, len(counts), step):
                n = counts[lo : lo + step]
                column = np.arange(int(n.max()))[None, :]
                valid = column < n[:, None]
                rows = np.where(valid, ids[np.where(valid, starts[lo : lo + step, None] + column, 0)], 0)
                log_probs = shared_prompt_log_probs(self.lm, prompt_ids, torch.as_tensor(rows, device=device))
                out.append(log_probs.cpu().numpy()[valid])
        return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)

    @contextlib.contextmanager
    def reference_model(self, adapter: Mapping[str, torch.Tensor] | None = None) -> Iterator[None]:
        """Inside the block the model is a reference model: the base LM (adapters disabled) when ``adapter``
        is None, else the LM with that adapter state (e.g. a warm-up checkpoint); the trained adapter is
        restored after the block."""
        if adapter is None:
            with adapters_disabled(self.lm):
                yield
            return
        saved = self.trainable_state_dict()
        load_adapter_state_dict(self.lm, dict(adapter))
        try:
            yield
        finally:
            load_adapter_state_dict(self.lm, saved)

    # -------------------------------------------------------------------------------------- recommend

    def trie(self) -> TitleTrie:
        if self._trie is None:
            responses = build_responses(np.arange(len(self.texts)), self.texts, self.template)
            self._trie = build_title_trie(self.tokenizer, responses)
        return self._trie

    def recommend(self, rows: Any, k: int) -> Any:
        """Generate for every row (beam search), ground the first beam, and return the top-``k`` lists.

        ``rows`` are next-item sample rows (:class:`fairbench.evaluation.EvalRows` with histories).
        """
        from fairbench.evaluation import Ranking

        if rows.history is None:
            raise UserError("model=bigrec ranks next-item samples: keep metric.rows=auto (or sample)")
        tokens = self.prompts_of(rows.history, rows.users)
        trie = self.trie() if self.decoding == "constrained" else None
        n = len(rows)
        texts: list[list[str]] = []
        beam_items: list[list[int]] = []
        starts = range(0, n, self.generation_batch_size)
        for start in tqdm(
            starts, desc="generating", unit="batch", disable=n < 2 * self.generation_batch_size
        ):
            index = np.arange(start, min(start + self.generation_batch_size, n))
            batch = generation_batch(tokens, index, self.tokenizer.pad_token_id)
            beams = beam_search(
                self.lm,
                self.tokenizer,
                batch["input_ids"],
                batch["attention_mask"],
                num_beams=self.num_beams,
                max_new_tokens=self.max_new_tokens,
                trie=trie,
                length_penalty=self.length_penalty,
            )
            texts.extend(beams.texts)
            if trie is not None:
                for row_tokens in beams.tokens:
                    found = [item for beam in row_tokens for item in trie.items(beam)]
                    beam_items.append(list(dict.fromkeys(found)))
        first = [row[0].strip().strip('"').strip() if row else "" for row in texts]
        with adapters_disabled(self.lm):
            queries = last_token_embeddings(
                self.lm, self.tokenizer, first, batch_size=self.generation_batch_size
            )
        exclude = rows.exclude if rows.exclude.nnz else None
        depth = min(self.item_vectors.shape[0], k + (self.num_beams if trie is not None else 0))
        items, distances = ground_topk(
            queries, self.item_vectors.cpu(), depth, self.grounding_batch_size, exclude=exclude
        )
        items, distances = items.numpy(), distances.numpy()
        if trie is not None:
            items = np.stack([_beams_first(beam_items[r], items[r], k) for r in range(n)])
            distances = None
        else:
            items, distances = items[:, :k], distances[:, :k]
        prompt_hashes = [
            hashlib.sha256(
                np.ascontiguousarray(tokens.input_ids[tokens.offsets[r] : tokens.offsets[r + 1]])
            ).hexdigest()[:16]
            for r in range(n)
        ]
        details = [
            {
                "row": r,
                "user": int(rows.users[r]),
                "prompt_sha256": prompt_hashes[r],
                "beams": texts[r],
                "grounded_top10": items[r, :10].tolist(),
            }
            for r in range(n)
        ]
        grounding = None
        if trie is None:
            grounding = Grounding(queries, self.item_vectors.cpu(), self.popularity)
        return Ranking(
            rows, items, None if distances is None else -distances, details=details, grounding=grounding
        )


def _beams_first(beam_items: list[int], grounded: np.ndarray, k: int) -> np.ndarray:
    """The beams' items in beam order, then the grounded items not among them, cut to ``k``."""
    seen = set(beam_items)
    rest = [int(i) for i in grounded if int(i) not in seen]
    out = (beam_items + rest)[:k]
    return np.asarray(out + [-1] * (k - len(out)), dtype=np.int64)


def label_tokens(tokens: TokenizedInstructions, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(flat ids of the label tokens, label tokens per sample) of the first ``n`` samples, in the order of
    :func:`fairbench.backbones.causal_lm.token_cross_entropy` (a label at a sample's first position has no
    preceding token and does not count)."""
    n = len(tokens) if n is None else n
    end = int(tokens.offsets[n])
    flag = tokens.labels[:end] != -100
    flag[tokens.offsets[:n]] = False
    counts = np.bincount(np.repeat(np.arange(n), tokens.lengths[:n]), weights=flag, minlength=n)
    return tokens.input_ids[:end][flag], counts.astype(np.int64)
