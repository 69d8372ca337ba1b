#!/usr/bin/env bash
# Set up what is missing: .venv (the project) and .venv-ref (the official qwen-tts, for parity tests; left out with
# VOXTRACE_SKIP_REFERENCE=1). The one place that knows how to install; scripts/app and scripts/test run it first.
# Each environment keeps a stamp of what it was installed from (its requirements and this script): while the stamp
# is current nothing runs, so a second call costs milliseconds. Delete a stamp (.venv/.setup-stamp) to install again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# the hash of what an environment is installed from: the given requirement files and this script
stamp() { cat "$@" scripts/setup.sh | sha256sum | cut -d' ' -f1; }

# whether ENV exists and was installed from exactly FILES
current() {
  local env=$1
  shift
  [ -x "$env/bin/python" ] && [ "$(cat "$env/.setup-stamp" 2>/dev/null)" = "$(stamp "$@")" ]
}

pip_install() {
  local env=$1
  shift
  "$env/bin/pip" install -q --disable-pip-version-check "$@"
}

if ! current .venv requirements.txt; then
  echo "setup: installing .venv (requirements.txt)" >&2
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  pip_install .venv -r requirements.txt
  stamp requirements.txt >.venv/.setup-stamp
fi
if [ "${VOXTRACE_SKIP_REFERENCE:-0}" != 1 ] && ! current .venv-ref requirements-ref.txt; then
  echo "setup: installing .venv-ref (requirements-ref.txt and qwen-tts, for the parity tests)" >&2
  [ -x .venv-ref/bin/python ] || "$PY" -m venv .venv-ref
  pip_install .venv-ref -r requirements-ref.txt
  pip_install .venv-ref --no-deps qwen-tts==0.1.1
  stamp requirements-ref.txt >.venv-ref/.setup-stamp
fi
