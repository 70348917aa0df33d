#!/usr/bin/env bash
# Install what the end-to-end web test (tests/test_web_e2e.py) needs: Debian's Chromium and
# Playwright for Python. Playwright drives /usr/bin/chromium; it never downloads a browser of its
# own (do not run `playwright install`). Safe to run again: it skips what is already there.
#
#   bash scripts/setup-browser.sh              # pip of .venv/bin/python, else python3
#   PYTHON=/path/to/python bash scripts/setup-browser.sh
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

if ! command -v chromium >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
chromium --version

if ! "$PYTHON" -c "import playwright" >/dev/null 2>&1; then
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 "$PYTHON" -m pip install -q playwright
fi
"$PYTHON" -c "from importlib.metadata import version; print('playwright', version('playwright'))"
