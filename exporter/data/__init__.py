"""Bundled data sets (CSV with '#' header comments naming source, licence and year; see
README.md here). One reader for all of them."""

from __future__ import annotations

import csv
import os

# Files beside this module (the package is installed unpacked): importlib.resources would
# import zipfile and its readers, 0.4 MB of a daemon that reads two small files at start.
HERE = os.path.dirname(os.path.abspath(__file__))


def header_and_rows(name: str) -> tuple[list[str], list[dict[str, str]]]:
    """The '#' comment lines (without '# ') and the rows of exporter/data/<name>."""
    with open(os.path.join(HERE, name), encoding="utf-8") as file:
        lines = file.read().splitlines()
    header = [line.lstrip("# ").strip() for line in lines if line.startswith("#")]
    rows = list(csv.DictReader(line for line in lines if line and not line.startswith("#")))
    return header, rows


def rows(name: str) -> list[dict[str, str]]:
    return header_and_rows(name)[1]


def names() -> list[str]:
    return sorted(name for name in os.listdir(HERE) if name.endswith(".csv"))
