#!/bin/sh
# A separate virtual environment with CodeCarbon for bench/bench_sampler.py's comparison row.
# CodeCarbon is not a dependency of carbon-exporter: it lives only here, under bench/.
set -eu
cd "$(dirname "$0")"
python3 -m venv .venv-codecarbon
.venv-codecarbon/bin/python -m pip install -q --disable-pip-version-check "codecarbon==3.3.2"
echo "bench: CodeCarbon in bench/.venv-codecarbon (bench_sampler.py finds it there)" >&2
