#!/usr/bin/env bash
# Set up the project on a fresh machine: .venv (the project) and .venv-ref (the official qwen-tts, for parity tests).
# Re-running it is cheap: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
if [ "${VOXTRACE_SKIP_REFERENCE:-0}" != 1 ]; then
  [ -x .venv-ref/bin/python ] || "$PY" -m venv .venv-ref
  .venv-ref/bin/pip install -q --disable-pip-version-check -r requirements-ref.txt
  .venv-ref/bin/pip install -q --disable-pip-version-check --no-deps qwen-tts==0.1.1
fi
