#!/bin/sh
# Run the exporter on embedded defaults (or with any flags given): bootstraps .venv first.
set -eu
cd "$(dirname "$0")/.."
sh scripts/bootstrap.sh
exec .venv/bin/carbon-exporter "$@"
