#!/usr/bin/env bash
# Every GPU check in one run, for a lent GPU machine with little time (about 15 minutes):
# the gpu-marked tests, the throughput sweep, the FLAC/MP3/16 kHz WAV table with decode-only
# ceilings and GPU busy, oneDNN vs MKL on that machine's CPU, and `--engine ray` with one GPU
# actor against the local engine (where Ray is installed). Figures go to $OUT (or ./gpu-figures).
#   bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-figures}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu.txt"
python -m pytest -m gpu -q -p no:cacheprovider tests 2>&1 | tail -15 | tee "$out/gpu-tests.txt"
python benchmarks/throughput.py --device cuda --batch-size 128 --precision bf16 --files 64 --seconds 60 \
  --skip-memory --json "$out/throughput.json" 2>&1 | tee "$out/throughput.txt"
timeout 300 python benchmarks/throughput.py --device cuda --sweep --files 128 --seconds 60 --formats "" \
  --json "$out/sweep.json" 2>&1 | tee "$out/sweep.txt"
python benchmarks/cpu_vs_authors.py --batch-sweep 2>&1 | tee "$out/cpu-linear.txt"
if python -c "import ray.data" 2>/dev/null; then  # a head on 127.0.0.2 with the machine's GPU: one actor
  timeout 300 python benchmarks/ray_overhead.py --files 16 --seconds 60 --rounds 1 2>&1 | tee "$out/ray.txt"
else
  echo "ray is not installed here (pip install '.[ray]'): the Ray engine's GPU check skipped" | tee "$out/ray.txt"
fi
