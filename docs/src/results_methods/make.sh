#!/usr/bin/env bash
# Rebuilds docs/results_methods.md from scratch: 10 sweeps of AlphaRec + MiniLM on ml100k (3 seeds each), two
# at a time with one thread each, then BiFair's weight plot and `fairbench report`. Re-running skips the jobs
# that completed (skip_completed), so an interrupted build continues where it stopped. Run from the repository
# root.
set -uo pipefail
out=${FAIRBENCH_OUTPUTS:-outputs}/results_methods
common=(logger=none trainer.progress=false trainer.checkpoint=false)
export OMP_NUM_THREADS=1

queue() {  # each line: <sweep name> <overrides...>
  while read -r name args; do
    [[ -z "$name" || "$name" == \#* ]] && continue
    # shellcheck disable=SC2086
    fairbench train -m $args "${common[@]}" "hydra.sweep.dir=$out/$name" < /dev/null > "$out/$name.log" 2>&1 \
      || echo "sweep $name: some jobs failed (see $out/$name.log; the report lists them)"
  done
}
mkdir -p "$out"

queue <<'EOF' &
erm seed=0,1,2 method=erm trainer.max_epochs=20
bifair_pop seed=0,1,2 method=bifair trainer.max_epochs=20
bifair_genre seed=0,1,2 method=bifair method.groups=genre method.gradient_space=representation method.fd_scheme=forward trainer.max_epochs=20
bifair_separate_genre seed=0,1,2 method=bifair_separate method.groups=genre method.gradient_space=representation
bifair_pop_lp seed=0,1,2 method=bifair method.weighting=eq10_lp trainer.max_epochs=20
itfr_eta_pop seed=0,1,2 method=itfr method.eta=0.005 trainer.max_epochs=20
EOF
queue <<'EOF' &
bifair_separate_pop seed=0,1,2 method=bifair_separate
baselines_pop seed=0,1,2 method=reweight,groupdro,drorec,multifr,itfr,popdro trainer.max_epochs=20
dro_genre seed=0,1,2 method=reweight,groupdro,drorec method.groups=genre trainer.max_epochs=20
itfr_rho0_pop seed=0,1,2 method=itfr method.rho=0 trainer.max_epochs=20
EOF
wait

# BiFair's logged group weights per epoch (plot and CSV linked from the discussion)
bifair=()
for name in bifair_pop bifair_pop_lp bifair_separate_pop bifair_genre bifair_separate_genre; do
  bifair+=(--sweep-dir "$out/$name")
done
mkdir -p docs/results_methods
python scripts/bifair_weights.py "${bifair[@]}" --out docs/results_methods/bifair_weights.png

sweeps=()
for dir in "$out"/*/; do [[ -f "$dir/multirun.yaml" ]] && sweeps+=("${dir%/}"); done
fairbench report "${sweeps[@]}" --by method,method.groups --baseline method=erm --metric recall@20 \
  --columns recall@20,ndcg@20,hr@20,pop/cv@20,pop/min@20,genre/cv@20,genre/min@20 --paper bifair-table2 \
  --title "Fairness methods on AlphaRec: accuracy and item-side fairness (BiFair Table 2 protocol, ml100k)" \
  --preface docs/src/results_methods/preface.md --discussion docs/src/results_methods/discussion.md \
  --out docs/results_methods --document docs/results_methods.md
