#!/usr/bin/env bash
# Rebuilds docs/results_methods.md from scratch: 20 sweeps of AlphaRec + MiniLM on ml100k (3 seeds each), two
# at a time with one thread each, then `fairbench report`. Re-running skips the jobs that completed
# (skip_completed), so an interrupted build continues where it stopped. Run from the repository root.
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
bifair_separate_pop seed=0,1,2 method=bifair_separate
baselines_pop seed=0,1,2 method=reweight,groupdro,drorec,multifr,itfr,popdro trainer.max_epochs=20
itfr_rho0_pop seed=0,1,2 method=itfr method.rho=0 trainer.max_epochs=20
itfr_eta_pop seed=0,1,2 method=itfr method.eta=0.005 trainer.max_epochs=20
bifair_pop_lp seed=0,1,2 method=bifair method.weighting=eq10_lp trainer.max_epochs=20
bifair_pop_l2 seed=0,1,2 method=bifair method.gradient_normalization=l2 trainer.max_epochs=20
bifair_tg_pop seed=0,1,2 method=bifair method.entropy_sign=true_gradient trainer.max_epochs=20
bifair_separate_tg_pop seed=0,1,2 method=bifair_separate method.entropy_sign=true_gradient
EOF
queue <<'EOF' &
bifair_genre seed=0,1,2 method=bifair method.groups=genre method.gradient_space=representation method.fd_scheme=forward trainer.max_epochs=20
bifair_separate_genre seed=0,1,2 method=bifair_separate method.groups=genre method.gradient_space=representation
baselines_genre seed=0,1,2 method=reweight,groupdro,drorec,popdro,multifr method.groups=genre trainer.max_epochs=20
itfr_genre seed=0,1,2 method=itfr method.groups=genre trainer.max_epochs=20
bifair_tg_genre seed=0,1,2 method=bifair method.groups=genre method.gradient_space=representation method.fd_scheme=forward method.entropy_sign=true_gradient trainer.max_epochs=20
bifair_separate_tg_genre seed=0,1,2 method=bifair_separate method.groups=genre method.gradient_space=representation method.entropy_sign=true_gradient
EOF
wait

sweeps=()
for dir in "$out"/*/; do [[ -f "$dir/multirun.yaml" ]] && sweeps+=("${dir%/}"); done
discussion=()  # the analysis, written once the table is in
[[ -f docs/src/results_methods/discussion.md ]] && discussion=(--discussion docs/src/results_methods/discussion.md)
fairbench report "${sweeps[@]}" --by method,method.groups --baseline method=erm --metric recall@20 \
  --columns recall@20,ndcg@20,hr@20,pop/cv@20,pop/min@20,genre/cv@20,genre/min@20 --paper bifair-table2 \
  --title "Fairness methods on AlphaRec: accuracy and item-side fairness (BiFair Table 2 protocol, ml100k)" \
  --preface docs/src/results_methods/preface.md "${discussion[@]}" \
  --out docs/results_methods --document docs/results_methods.md
