#!/usr/bin/env bash
# Test-only dependencies: real speech and TTS engines (Debian), and the reference
# implementation openai-whisper, installed without its dependencies (it would pull a CUDA
# torch) plus the few it needs to import. Safe to run again.
set -euo pipefail
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
need=()
for pkg in pocketsphinx-testdata espeak-ng flite sox curl; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
python -m pip install -q --no-deps openai-whisper==20250625
python -m pip install -q numba more-itertools tqdm
# matplotlib: bench/report.py's plots, which the study's report test draws
python -m pip install -q matplotlib
# peft + transformers: the adapter interchange test loads our adapters into them
python -m pip install -q peft transformers
# The `llm` tests serve SmolLM2-135M with llama-cpp-python, built from source (~10 min once).
bash "$(dirname "$0")/../bench/llm_server.sh" install
