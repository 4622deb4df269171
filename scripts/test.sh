#!/usr/bin/env bash
# Set up (idempotent) and run the test suite. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh cosyvoice,test
exec .venv/bin/python -m pytest "$@"
