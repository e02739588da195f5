#!/bin/bash
# One prepared script for a machine with one GPU (or TPU), run from the
# repository root: time to model on the accelerator (issue 13) and the
# literature sweeps (issue 10) in one go. Checked with SMOKE=1 on CPU; no
# accelerator has run it yet, so no result in results/ comes from it.
#
#   GMP_JAX_DATA_DIR=<dir holding mnist.npz> bash benchmarks/accelerator_runs.sh OUT
#
# In order of priority, each job under its own time limit so that a slow
# one cannot starve the next:
#   1. time to model: the default pipeline with its per-stage breakdown
#      (python -m benchmarks.pipeline) -> OUT/pipeline_gpu.json;
#   2. a LeNet-5-Caffe tau sweep (python -m experiments.tools.sweep);
#   3. the train step alone (python -m benchmarks.train_step)
#      -> OUT/train_step_gpu.json;
#   4. two more seeds of the default config;
#   5. a LeNet-300-100 sweep and the poster net's tau sweep (reusing job
#      1's teacher).
# Every workdir's model.gmpz, reports, figures, metrics and stage records
# (not the checkpoints or intermediate weights) are packed into
# OUT/runs_<group>.tar.gz after each job, and the whole log goes to
# OUT/log.txt. SMOKE=1 runs the same jobs on the `:smoke` configs (seconds,
# any machine) to check the script itself.
set -u
OUT=${1:?usage: benchmarks/accelerator_runs.sh OUT_DIR}
W=${GMP_JAX_RUNS_DIR:-/tmp/gmp_jax_runs}
mkdir -p "$OUT" "$W"
export PYTHONUNBUFFERED=1
exec > >(tee -a "$OUT/log.txt") 2>&1

SUFFIX=""; EPOCHS5=30,60; EPOCHS300=60,120; TEACHER300=30
if [ "${SMOKE:-0}" = 1 ]; then
  SUFFIX=":smoke"; EPOCHS5=1,2; EPOCHS300=1,2; TEACHER300=1
fi
cfg() { echo "experiments/configs/$1.py$SUFFIX"; }

pack() {  # pack GROUP: the kept files of $W/GROUP -> $OUT/runs_GROUP.tar.gz
  (cd "$W" && find "$1" \( -name checkpoints -o -name tensorboard \) -prune \
      -o -type f \( -name model.gmpz -o -name '*.json' -o -name '*.md' \
      -o -name '*.png' -o -name metrics.jsonl \) -print \
    | tar czf "$OUT/runs_$1.tar.gz.tmp" -T - \
    && mv "$OUT/runs_$1.tar.gz.tmp" "$OUT/runs_$1.tar.gz")
}

job() {  # job LIMIT_S NAME COMMAND...: runs and times one job
  local limit=$1 name=$2; shift 2
  echo "=== $(date -u +%T) $name: $*"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@"
  echo "=== $name: exit $? after $((SECONDS - t0)) s"
}

python -c 'import jax; print(jax.__version__, jax.devices())'
command -v nvidia-smi >/dev/null && nvidia-smi -L

# 1. Time to model (issue 13): a fresh workdir, so every stage runs.
job 240 pipeline python -m benchmarks.pipeline --noblock \
  --config="$(cfg mnist)" --workdir="$W/poster/seed0" \
  --json="$OUT/pipeline_gpu.json"
pack poster

# 2. LeNet-5-Caffe, the net that trains too slowly on two CPU cores.
job 220 lenet5 python -m experiments.tools.sweep --config="$(cfg lenet5)" \
  --workdir="$W/lenet5/sweep" --taus=8e-2,1.5e-1,3e-1 \
  --set=retrain.epochs=$EPOCHS5
pack lenet5

# 3. The step alone.
if [ -z "$SUFFIX" ]; then
  job 60 train_step python -m benchmarks.train_step \
    --configs jax_gmp_multi --batch_sizes 256 \
    --json "$OUT/train_step_gpu.json"
fi

# 4. The poster net's margin: two more seeds of the default config.
for seed in 1 2; do
  job 60 "seed$seed" python -m experiments.mnist --config="$(cfg mnist)" \
    --config.seed=$seed --workdir="$W/poster/seed$seed"
  pack poster
done

# 5. LeNet-300-100 and the poster net's Pareto front (job 1's teacher).
job 100 lenet300 python -m experiments.tools.sweep --config="$(cfg lenet300)" \
  --workdir="$W/lenet300/sweep" --taus=3e-2,5e-2,8e-2 \
  --set=retrain.epochs=$EPOCHS300 --config.teacher.epochs=$TEACHER300
pack lenet300
job 150 poster_sweep python -m experiments.tools.sweep --config="$(cfg mnist)" \
  --workdir="$W/poster/sweep" --teacher_workdir="$W/poster/seed0" \
  --taus=5e-3,1e-2,2e-2,4e-2,8e-2
pack poster
echo "=== $(date -u +%T) all jobs done"
