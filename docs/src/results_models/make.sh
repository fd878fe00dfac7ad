#!/usr/bin/env bash
# Rebuilds docs/results_models.md: BiFair's Table 1 sweep on ml100k (21 jobs, two at a time with one thread
# each; re-running skips completed jobs), then `fairbench report` with the preface and discussion of this
# folder. Run from the repository root.
set -euo pipefail
export OMP_NUM_THREADS=1
fairbench reproduce bifair-table1 dataset=ml100k hydra/launcher=joblib hydra.launcher.n_jobs=2 \
  logger=none trainer.progress=false trainer.checkpoint=false
sweep=$(fairbench reproduce bifair-table1 dataset=ml100k hydra/launcher=joblib hydra.launcher.n_jobs=2 \
  logger=none trainer.progress=false trainer.checkpoint=false --dry-run | sed -n 's/.*hydra.sweep.dir=\([^ ]*\).*/\1/p')
fairbench report "$sweep" --by model --baseline model=xsimgcl --metric recall@20 \
  --columns recall@20,ndcg@20,hr@20,pop/cv@20,pop/min@20,genre/cv@20,genre/min@20 --paper bifair-table1 \
  --title "Recommenders: accuracy and item-side fairness (BiFair Table 1 protocol, ml100k)" \
  --preface docs/src/results_models/preface.md --discussion docs/src/results_models/discussion.md \
  --out docs/results_models --document docs/results_models.md
