#!/usr/bin/env bash
# The GPU benchmarks in one short script (<= 8 minutes in all on one GPU): speed, committee,
# attack, MD, scale, MACE (cuequivariance's CUDA kernels: method "auto" picks uniform_1d on a
# GPU; inference, training step, 4-member committee) and XANES throughput. Every step has its own time limit, so one slow
# step cannot eat the others' time; a failed step is reported and the next one runs.
# Results (JSON + markdown, with the device name) go to benchmarks/results/gpu/, plus
# device.txt (nvidia-smi) and log.txt. Run from anywhere:  bash benchmarks/gpu.sh
# Parses without a GPU:  bash -n benchmarks/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=benchmarks/results/gpu
mkdir -p "$OUT"
export JAXMAT_RESULTS="$PWD/$OUT"
export XLA_PYTHON_CLIENT_PREALLOCATE=false
LOG="$OUT/log.txt"
: > "$LOG"
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true) > "$OUT/device.txt" 2>&1
"$PY" -c "import jax; print(jax.__version__, jax.devices())" >> "$OUT/device.txt" 2>&1

step() {  # step SECONDS NAME COMMAND...
  local limit=$1 name=$2; shift 2
  local t0=$SECONDS
  echo "== $name (limit ${limit} s)" | tee -a "$LOG"
  timeout "$limit" "$@" >> "$LOG" 2>&1
  local rc=$?
  echo "== $name: rc=$rc, $((SECONDS - t0)) s" | tee -a "$LOG"
}

step 60  speed      "$PY" benchmarks/speed.py --quick --out "$OUT/speed"
step 60  committee  "$PY" benchmarks/committee.py --members 1 8 --repeats 5
if [ -f benchmarks/attack_speed.py ]; then
  step 60 attack    "$PY" benchmarks/attack_speed.py
else
  step 60 attack    "$PY" benchmarks/adversarial_ammonia.py --throughput-only --members 8 \
                      --out adversarial_throughput
fi
step 120 md         "$PY" benchmarks/md_speed.py --epochs 100 --replicas 1024 --steps 1000 \
                      --ase-steps 100 --si-rep 16 --si-steps 200 --si-ase-steps 5 --out md_speed
step 90  scale      "$PY" benchmarks/scale.py --reps 4 8 16 20 --repeats 3 --out scale
step 45  mace       "$PY" benchmarks/mace.py speed --models mace --rounds 2 --repeats 3
if [ -f benchmarks/gpu_xanes.sh ]; then
  step 45 xanes     bash benchmarks/gpu_xanes.sh
fi
echo "total $SECONDS s" | tee -a "$LOG"
