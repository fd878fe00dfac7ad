"""Cost of the generative path (BIGRec) through fairbench's stages, with a plain Hugging Face Trainer as the
reference for fine-tuning speed.

    python scripts/bench_generative.py [--threads 1] [--train-samples 32] [--rows 8] [overrides...]

On the offline default (``experiment=bigrec``: SmolLM2-135M, ml100k sequential prompts; overrides change it):
- sft: tokens/s of one training epoch of ``fairbench.pipeline.train`` (LoRA, micro-batches of 4, the
  experiment's accumulation), and of ``transformers.Trainer`` on the same tokenised samples, LoRA config,
  micro-batch, accumulation and learning rate, in the same process; the ratio fairbench / HF (higher is better
  for fairbench). Tokens = non-padding tokens of the training samples;
- generate: samples/s of ``BIGRec.recommend`` (beam search + grounding) on the first ``--rows`` test rows;
- beam search with the prompts encoded once for all beams vs ``generate``'s per-beam expansion of the
  prompts, on the same test prompts, interleaved (medians of 2 each; the ratio < 1 is the saving);
- grounding: milliseconds per 1,000 generations ranked against the catalogue (L2, ``ground_topk``);
- peak resident memory of the process.
Timings are noisy on shared machines: the two fine-tuning figures come from the same process, one after the
other; with ``--threads 1`` they are stable enough to compare. Results: printed and written as JSON to
outputs/bench/generative.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch


def hf_trainer_tokens_per_second(exp, tokens) -> float:
    """One epoch of transformers.Trainer over the same samples, on the same peft model with its LoRA B
    matrices reset to zero (an adapter as freshly initialised; the cost does not depend on the values)."""
    from transformers import Trainer, TrainingArguments

    model = exp.model.lm
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.zero_()
    pad = exp.model.tokenizer.pad_token_id
    rows = [
        {"input_ids": tokens.sample(n)[0].tolist(), "labels": tokens.sample(n)[1].tolist()}
        for n in range(len(tokens))
    ]

    def collate(batch: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, r in enumerate(batch):
            ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
            labels[i, : len(r["labels"])] = torch.tensor(r["labels"])
            mask[i, : len(r["input_ids"])] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    trainer_cfg = exp.trainer
    args = TrainingArguments(
        output_dir=str(Path("outputs") / "bench" / "hf_trainer"),
        per_device_train_batch_size=trainer_cfg.batch_size,
        gradient_accumulation_steps=trainer_cfg.accumulate_grad_batches,
        learning_rate=trainer_cfg.lr,
        warmup_steps=trainer_cfg.warmup_steps,
        num_train_epochs=1,
        save_strategy="no",
        report_to=[],
        logging_strategy="no",
        use_cpu=exp.device.type == "cpu",
        dataloader_num_workers=0,
        remove_unused_columns=False,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=collate)
    started = time.perf_counter()
    trainer.train()
    return float(tokens.lengths.sum()) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train-samples", type=int, default=32)
    parser.add_argument("--rows", type=int, default=8, help="test rows generated and grounded")
    parser.add_argument("--out", type=Path, default=Path("outputs") / "bench" / "generative.json")
    args, overrides = parser.parse_known_args()
    torch.set_num_threads(args.threads)

    from fairbench.config import compose_config
    from fairbench.evaluation import evaluation_rows
    from fairbench.models.grounding import ground_topk
    from fairbench.pipeline import prepare, train

    cfg = compose_config(
        [
            "experiment=bigrec",
            f"dataset.protocol.max_train_samples={args.train_samples}",
            f"dataset.protocol.max_test_samples={max(args.rows, 1)}",
            "trainer.max_epochs=1",
            "trainer.eval_every=1000",
            *overrides,
        ]
    )
    started = time.perf_counter()
    exp = prepare(cfg)
    out: dict = {"prepare_seconds": time.perf_counter() - started, "threads": args.threads}
    tokens = exp.model.train_tokens
    out["train_samples"], out["train_tokens"] = len(tokens), int(tokens.lengths.sum())

    started = time.perf_counter()
    train(exp, validate=False)
    out["sft_tokens_per_s"] = out["train_tokens"] / (time.perf_counter() - started)
    out["hf_trainer_tokens_per_s"] = hf_trainer_tokens_per_second(exp, tokens)
    out["sft_ratio_vs_hf_trainer"] = out["sft_tokens_per_s"] / out["hf_trainer_tokens_per_s"]

    rows = evaluation_rows(exp.data, "test", "sample")
    started = time.perf_counter()
    exp.model.recommend(rows, 20)
    out["generate_samples_per_s"] = len(rows) / (time.perf_counter() - started)

    # the prompts encoded once for all beams vs generate's own per-beam expansion, interleaved, same prompts
    from fairbench.data.instructions import generation_batch
    from fairbench.models.decoding import beam_search

    model = exp.model
    prompt_tokens = model.prompts_of(rows.history, rows.users)
    prompts = generation_batch(prompt_tokens, np.arange(len(rows)), model.tokenizer.pad_token_id)
    seconds: dict[bool, list[float]] = {True: [], False: []}
    for prefill in (False, True, True, False):
        started = time.perf_counter()
        beam_search(
            model.lm,
            model.tokenizer,
            **prompts,
            num_beams=model.num_beams,
            max_new_tokens=model.max_new_tokens,
            prefill=prefill,
        )
        seconds[prefill].append(time.perf_counter() - started)
    out["beam_search_seconds_prefill_once"] = float(np.median(seconds[True]))
    out["beam_search_seconds_generate_expansion"] = float(np.median(seconds[False]))
    out["beam_search_ratio_prefill_once"] = (
        out["beam_search_seconds_prefill_once"] / out["beam_search_seconds_generate_expansion"]
    )

    item_vectors = exp.model.item_vectors.cpu()
    queries = torch.randn(1000, item_vectors.shape[1], generator=torch.Generator().manual_seed(0))
    ground_topk(queries[:10], item_vectors, 20)  # warm-up
    started = time.perf_counter()
    ground_topk(queries, item_vectors, 20)
    out["grounding_ms_per_1000"] = 1000 * (time.perf_counter() - started)
    out["n_items"] = int(item_vectors.shape[0])
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    width = max(len(k) for k in out)
    for key, value in out.items():
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
