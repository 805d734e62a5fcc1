#!/usr/bin/env bash
# One prepared run of the attack-engine benchmarks on a lent GPU host (../shared/notes/gpu.md):
# the host's own torch, plus the pure-Python wheels it lacks from .whl/ (pip download
# --only-binary=:all: --python-version 3.12 pydantic tomli_w). Results go to $OUT.
set -u
OUT=${OUT:-/tmp/fedsim-gpu}
mkdir -p "$OUT" .gl
python3 -m pip install -q --no-index --no-deps --target .gl .whl/*.whl > "$OUT/pip.log" 2>&1
export PYTHONPATH="$PWD/.gl:$PWD:$PWD/benchmarks"
python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name())" | tee "$OUT/env.txt"
cd benchmarks
timeout "${SPEED_S:-170}" python3 attack_speed.py --device cuda --skip quality > "$OUT/speed.log" 2>&1; echo "speed rc $?"
cp results/attack_speed_cuda.json "$OUT/" 2>/dev/null
timeout "${QUALITY_S:-200}" python3 attack_speed.py --device cuda --skip speed > "$OUT/quality.log" 2>&1; echo "quality rc $?"
cp results/attack_speed_cuda.json "$OUT/attack_quality_cuda.json" 2>/dev/null
timeout "${DEFAULTS_S:-100}" python3 attack_defaults.py --device cuda --models resnet18 --plain-only --skip-released --skip-old > "$OUT/defaults.log" 2>&1; echo "defaults rc $?"
cp results/attack_defaults_cuda.json "$OUT/" 2>/dev/null
tail -n 30 "$OUT"/*.log
