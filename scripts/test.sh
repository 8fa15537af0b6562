#!/usr/bin/env bash
# The test command (README and .ci/run): set up the environment (and build Horovod once, about 5
# minutes, so the 2-process Horovod test runs; UNET_SKIP_HOROVOD=1 skips the build and that test
# outside CI), install headless Chromium when it is missing (needs root), then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/install_chromium.sh  # tests/test_report.py renders a run report in headless Chromium
if [ "${UNET_SKIP_HOROVOD:-0}" != 1 ] || [ "${CI:-}" = true ]; then
  bash scripts/install_horovod.sh
fi
# pyproject.toml adds -n auto --dist loadfile: one worker more than the cores (tests/conftest.py), each test
# file on one worker.
exec .venv/bin/python -m pytest -q tests "$@"
