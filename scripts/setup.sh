#!/usr/bin/env bash
# Create .venv with a supported Python (3.11, 3.12 or 3.13: the first found, or $PYTHON) and install the
# package in editable mode with its pinned requirements and test tools. Idempotent: reinstalls only when
# requirements*.txt or pyproject.toml changed since the last successful install.
set -euo pipefail
cd "$(dirname "$0")/.."
supported() { "$1" -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] <= (3, 13)))' 2>/dev/null; }
if [ -n "${PYTHON:-}" ]; then
  supported "$PYTHON" || { echo "setup: PYTHON=$PYTHON is not Python 3.11, 3.12 or 3.13" >&2; exit 1; }
  PY=$PYTHON
else
  PY=
  for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null && supported "$candidate"; then PY=$candidate; break; fi
  done
  [ -n "$PY" ] || { echo "setup: no Python 3.11, 3.12 or 3.13 found (set PYTHON=/path/to/python3.X)" >&2; exit 1; }
fi
if [ -x .venv/bin/python ] && ! supported .venv/bin/python; then
  echo "setup: .venv has an unsupported Python; remove .venv and run again" >&2; exit 1
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.requirements.sha256
want=$(cat requirements.txt requirements-dev.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || [ ! -x .venv/bin/unet-medical ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements.txt -r requirements-dev.txt
  # the package itself, editable: the `unet-medical` command, and imports that follow the checkout
  .venv/bin/python -m pip install -q --no-deps -e .
  echo "$want" > "$stamp"
fi
