#!/usr/bin/env bash
# The test command (README and .ci/run): set up the environment (and build Horovod once, about 5
# minutes, so the 2-process Horovod test runs; UNET_SKIP_HOROVOD=1 skips the build and that test
# outside CI), then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "${UNET_SKIP_HOROVOD:-0}" != 1 ] || [ "${CI:-}" = true ]; then
  bash scripts/install_horovod.sh
fi
exec .venv/bin/python -m pytest -q tests "$@"
