#!/bin/sh
# Run the whole test suite (pytest): bootstraps .venv and the Debian test tools first.
# Extra arguments go to pytest (e.g. -k rapl).
set -eu
cd "$(dirname "$0")/.."
sh scripts/bootstrap.sh --test-tools
exec .venv/bin/python -m pytest "$@"
