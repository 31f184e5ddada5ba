#!/usr/bin/env bash
# Install what the benchmarks need beyond the test extra: the bench extra (baseline
# libraries, scikit-image photos) and Debian wallpaper packages (real photographs).
set -euo pipefail
cd "$(dirname "$0")/.."
pip install -q -e '.[bench]'
if command -v apt-get >/dev/null; then
  SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
  $SUDO apt-get install -y -q --no-install-recommends lomiri-wallpapers ukui-wallpapers >/dev/null
fi
