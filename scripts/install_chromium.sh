#!/usr/bin/env bash
# Install headless Chromium (Debian package `chromium`) for tests/test_report.py, which opens a run's
# report.html in it, takes a screenshot and reads the DOM. Idempotent: does nothing when
# /usr/bin/chromium exists. Needs root (apt-get); without root it says so and exits 0, and the
# Chromium test skips (fails under CI=true).
#
# Usage: bash scripts/install_chromium.sh
set -euo pipefail
CHROMIUM=/usr/bin/chromium
if [ -x "$CHROMIUM" ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "install_chromium: not root, $CHROMIUM not installed (sudo apt-get install -y chromium)" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends chromium
"$CHROMIUM" --version
