#!/bin/sh
# Run the whole test suite: bootstraps .venv and the Debian prometheus package first.
# Extra arguments go to pytest (e.g. -k rapl).
set -eu
cd "$(dirname "$0")/.."
sh scripts/bootstrap.sh --with-prometheus
exec .venv/bin/python -m pytest "$@"
