# Sourced by the GPU scripts here: $OUT, the pure-Python wheels the host lacks from .whl/
# (pip download --only-binary=:all: --python-version 3.12 pydantic tomli_w) into .gl, and
# the host's Python, torch and device in $OUT/env.txt.
OUT=${OUT:-/tmp/fedsim-gpu}
mkdir -p "$OUT" .gl
python3 -m pip install -q --no-index --no-deps --target .gl .whl/*.whl > "$OUT/pip.log" 2>&1
export PYTHONPATH="$PWD/.gl:$PWD:$PWD/benchmarks"
python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name())" | tee "$OUT/env.txt"
