#!/usr/bin/env bash
# One prepared run of the attack-engine benchmarks on a lent GPU host (../shared/notes/gpu.md):
# the host's own torch, plus the pure-Python wheels it lacks from .whl/ (pip download
# --only-binary=:all: --python-version 3.12 pydantic tomli_w). Results go to $OUT.
set -u
source "$(dirname "$0")/setup.sh"
cd benchmarks
timeout "${SPEED_S:-170}" python3 attack_speed.py --device cuda --skip quality > "$OUT/speed.log" 2>&1; echo "speed rc $?"
cp results/attack_speed_cuda.json "$OUT/" 2>/dev/null
timeout "${QUALITY_S:-200}" python3 attack_speed.py --device cuda --skip speed > "$OUT/quality.log" 2>&1; echo "quality rc $?"
cp results/attack_speed_cuda.json "$OUT/attack_quality_cuda.json" 2>/dev/null
timeout "${DEFAULTS_S:-100}" python3 attack_defaults.py --device cuda --models resnet18 --plain-only --skip-released --skip-old > "$OUT/defaults.log" 2>&1; echo "defaults rc $?"
cp results/attack_defaults_cuda.json "$OUT/" 2>/dev/null
tail -n 30 "$OUT"/*.log
