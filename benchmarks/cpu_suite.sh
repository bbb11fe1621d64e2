#!/usr/bin/env bash
# The README's test command on this machine's CPU, with CUDA hidden: the unit suite, then the golden notebooks under
# nbval. Prints the CPU's model and the flags that decide its numeric kernels (AVX512, AVX512-BF16, AMX; Arm's
# bf16/SVE) beside each result, so a failure that only one CPU shows names that CPU.
#
#   benchmarks/cpu_suite.sh                  # both suites
#   benchmarks/cpu_suite.sh tests/test_decode.py -k dequantized   # these pytest arguments instead of `tests`, no nbval
#   PYTHON=python3 benchmarks/cpu_suite.sh   # another interpreter (default .venv/bin/python)
#   LOG_DIR=out benchmarks/cpu_suite.sh      # keep both logs (default: a temporary folder)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export CUDA_VISIBLE_DEVICES=""  # a GPU machine's CPU: everything runs on the CPU, the GPU suite skips itself
# This checkout's package, in pytest and in nbval's kernels alike (an editable install may point at another copy).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
LOG_DIR=${LOG_DIR:-$(mktemp -d)}
mkdir -p "$LOG_DIR"

cpu=$("$PY" -c "from semifinetune.env import cpu_line; print(cpu_line())" 2>/dev/null) || cpu="CPU: not read ($PY could not import semifinetune.env)"
echo "$cpu"

# The last line pytest prints: "1 failed, 371 passed, 18 skipped in 180.24s".
summary() { grep -E '^=*.* (passed|failed|error|errors|skipped|deselected|no tests ran).* in [0-9.]+s' "$1" | tail -1 | tr -d "=" | xargs; }

[ $# -gt 0 ] || set -- tests
# -v into the log, each failure on the console as it happens: a run cut short still names what failed.
"$PY" -m pytest -v -rfEs -p no:cacheprovider "$@" 2>&1 | tee "$LOG_DIR/unit.log" | grep -E --line-buffered ' (FAILED|ERROR)|^(FAILED|ERROR|SKIPPED)|^=+ .* in [0-9.]+s'

unit=${PIPESTATUS[0]}
results=("unit suite (CUDA hidden): $(summary "$LOG_DIR/unit.log") [exit $unit]")
nb=0
if [ "$*" = tests ]; then
  "$PY" -m pytest -v -rfE -p no:cacheprovider --nbval tests/nbval --nbval-sanitize-with tests/nbval/sanitize.cfg 2>&1 |
    tee "$LOG_DIR/nbval.log" | grep -E --line-buffered ' (FAILED|ERROR)|^(FAILED|ERROR)|^=+ .* in [0-9.]+s'

  nb=${PIPESTATUS[0]}
  results+=("nbval (CUDA hidden): $(summary "$LOG_DIR/nbval.log") [exit $nb]")
fi

echo
echo "== $cpu"
printf '== %s\n' "${results[@]}"
echo "== logs: $LOG_DIR"
[ "$unit" -eq 0 ] && [ "$nb" -eq 0 ]
