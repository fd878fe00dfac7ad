"""Cost of the generative path's pieces on the offline default (SmolLM2-135M), to choose default sizes.

    python scripts/bench_causal_lm.py [--threads 1] [--model smollm2-135m] [--device cpu] [--steps 3]

Measures, on MovieLens-100K under the sequential protocol (BIGRec prompts from real samples):
- load: seconds to load the model + tokenizer (GGUF parsing and dequantisation for the packaged model);
- sft: forward + backward tokens/s of the per-sample response loss with LoRA (r 8, q_proj/v_proj), micro
  batch 4 (right padding; the tokens counted are the non-padding tokens);
- generate: beam-4 samples/s, free and trie-constrained, ~20 new tokens, batch 8;
- embed: milliseconds per 1,000 item titles (last token, base model, batch 64).
Each figure is given by wall clock and by process CPU time: on a machine shared with other jobs the wall
clock grows with the load, while with ``--threads 1`` (the default) CPU time stays close to what one
uncontended core gives. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch


class Clock:
    """Accumulates wall-clock and process CPU seconds of the timed blocks."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0

    def time(self, call: Callable[[], object]) -> object:
        wall, cpu = time.perf_counter(), time.process_time()
        out = call()
        self.wall += time.perf_counter() - wall
        self.cpu += time.process_time() - cpu
        return out

    def rates(self, amount: float, name: str) -> dict[str, float]:
        """``amount / seconds`` by wall clock and by CPU time."""
        return {f"{name}_wall": round(amount / self.wall, 2), f"{name}_cpu": round(amount / self.cpu, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=3, help="timed micro-batches / generation batches")
    parser.add_argument("--titles", type=int, default=1000, help="item titles embedded")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    from fairbench.backbones.causal_lm import CausalLMBackbone, LoRASettings, sequence_losses
    from fairbench.config import compose_config
    from fairbench.data import load_dataset
    from fairbench.data.instructions import (
        build_prompts,
        build_responses,
        generation_batch,
        item_texts,
        prompt_template,
        tokenize_instructions,
        training_batch,
    )
    from fairbench.models.decoding import beam_search, build_title_trie

    cfg = compose_config(["dataset=ml100k", "dataset/protocol=sequential"])
    data = load_dataset(cfg.dataset, cache_dir=Path(cfg.paths.cache_dir).expanduser())
    texts = item_texts(data.items, "{title}")
    template = prompt_template("movie")
    train = data.samples["train"]
    results: dict[str, object] = {
        "threads": torch.get_num_threads(),
        "model": args.model,
        "device": args.device,
    }

    backbone = CausalLMBackbone(model=args.model, device=args.device)
    clock = Clock()
    clock.time(backbone.load)
    results["load_s_wall"], results["load_s_cpu"] = round(clock.wall, 1), round(clock.cpu, 1)
    tok = backbone.tokenizer

    rng = np.random.default_rng(0)
    picked = rng.choice(len(train), size=4 * (args.steps + 1) + 8 * (args.steps + 1), replace=False)
    prompts = build_prompts(train, texts, template)
    responses = build_responses(train.target, texts, template)
    tokenized = tokenize_instructions(tok, [prompts[i] for i in picked], [responses[i] for i in picked])
    results["mean_tokens_per_sample"] = float(tokenized.lengths.mean())

    # --- SFT: forward + backward with LoRA
    model = backbone.attach_lora(LoRASettings())
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def sft_step(batch: dict[str, torch.Tensor]) -> None:
        sequence_losses(model, **batch).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    tokens, clock = 0, Clock()
    for step in range(args.steps + 1):
        batch = training_batch(tokenized, np.arange(4 * step, 4 * step + 4), tok.pad_token_id)
        batch = {k: v.to(args.device) for k, v in batch.items()}
        if step == 0:  # warm-up
            sft_step(batch)
            continue
        clock.time(lambda batch=batch: sft_step(batch))
        tokens += int(batch["attention_mask"].sum())
    results.update(clock.rates(tokens, "sft_tokens_per_s"))
    model.eval()

    # --- generation: beam 4, ~20 new tokens, batch 8
    trie = build_title_trie(tok, build_responses(np.arange(len(texts)), texts, template))
    base = 4 * (args.steps + 1)
    for name, constraint in (("free", None), ("constrained", trie)):
        samples, clock = 0, Clock()
        for step in range(args.steps):
            idx = base + np.arange(8 * step, 8 * step + 8) % (8 * (args.steps + 1))
            batch = generation_batch(tokenized, idx, tok.pad_token_id)
            clock.time(lambda b=batch, c=constraint: beam_search(model, tok, **b, max_new_tokens=20, trie=c))
            samples += len(idx)
        results.update(clock.rates(samples, f"generate_{name}_samples_per_s"))

    # --- title embeddings with the base model
    titles = [str(t) for t in texts[: args.titles]]
    backbone.encode(titles[:64], batch_size=64)  # warm-up
    clock = Clock()
    clock.time(lambda: backbone.encode(titles, batch_size=64))
    results["embed_ms_per_1000_titles_wall"] = round(clock.wall * 1e6 / len(titles), 1)
    results["embed_ms_per_1000_titles_cpu"] = round(clock.cpu * 1e6 / len(titles), 1)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
