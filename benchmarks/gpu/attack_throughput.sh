#!/usr/bin/env bash
# Issue 24's GPU figures in one prepared run on a lent GPU host (../shared/notes/gpu.md),
# set up as attack_engine.sh: ResNet-18 (width 64) batch 16 per step in every CUDA mode
# (inductor included), the grouped throughput of every case at groups of 1, 4, 16, 64
# (its built-in check runs a cudagraph group against a solo attack first). Results go to $OUT. Not yet run: no GPU was lent when it was written.
set -u
source "$(dirname "$0")/setup.sh"
cd benchmarks
FEDSIM_CUDA_MODES="eager graph cudagraph inductor" timeout "${SPEED_S:-200}" \
    python3 attack_speed.py --device cuda --skip quality one_restart > "$OUT/speed.log" 2>&1
echo "speed rc $?"
cp results/attack_speed_cuda.json "$OUT/" 2>/dev/null
timeout "${THROUGHPUT_S:-300}" python3 attack_throughput.py --device cuda --steps 30 \
    > "$OUT/throughput.log" 2>&1; echo "throughput rc $?"
cp results/attack_throughput_cuda.json results/attack_throughput_cuda.md "$OUT/" 2>/dev/null
tail -n 40 "$OUT"/*.log
