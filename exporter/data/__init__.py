"""Bundled data sets (CSV with '#' header comments naming source, licence and year; see
README.md here). One reader for all of them."""

from __future__ import annotations

import csv
from importlib import resources


def header_and_rows(name: str) -> tuple[list[str], list[dict[str, str]]]:
    """The '#' comment lines (without '# ') and the rows of exporter/data/<name>."""
    lines = resources.files(__name__).joinpath(name).read_text("utf-8").splitlines()
    header = [line.lstrip("# ").strip() for line in lines if line.startswith("#")]
    rows = list(csv.DictReader(line for line in lines if line and not line.startswith("#")))
    return header, rows


def rows(name: str) -> list[dict[str, str]]:
    return header_and_rows(name)[1]


def names() -> list[str]:
    return sorted(e.name for e in resources.files(__name__).iterdir() if e.name.endswith(".csv"))
