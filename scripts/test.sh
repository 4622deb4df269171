#!/usr/bin/env bash
# Set up (idempotent) and run the test suite. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh cosyvoice,test

# The console is tested in a real headless Chromium (Debian's package).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "warning: chromium is not installed (apt-get install chromium); the browser tests will fail" >&2
  fi
fi

exec .venv/bin/python -m pytest "$@"
