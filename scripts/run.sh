#!/usr/bin/env bash
# Set up (idempotent) and run the gateway. Arguments go to `python -m gateway`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh cosyvoice
exec .venv/bin/python -m gateway "$@"
