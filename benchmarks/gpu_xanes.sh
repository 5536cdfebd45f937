#!/usr/bin/env bash
# XANES throughput on the accelerator (<= 60 s): spectra/s of one site head and a 5-member
# committee (vmapped), batch 64 and 256, on 2048 structures; classification on the host.
# Writes benchmarks/results/xanes_throughput_<platform>.json/.md. Parses without a GPU:
#   bash -n benchmarks/gpu_xanes.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
timeout 60 "$PY" benchmarks/xanes_throughput.py --quick --n-quick 2048 --members 5 --repeats 3
