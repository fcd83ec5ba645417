"""JSON output, validated against the versioned schema before it is written."""

from __future__ import annotations

import functools
import json
from importlib import resources

import jsonschema

SCHEMA_FILE = "report.schema.json"


@functools.lru_cache(maxsize=1)
def schema() -> dict:
    return json.loads(resources.files("exporter.report").joinpath(SCHEMA_FILE)
                      .read_text("utf-8"))


def validate(document: dict) -> None:
    jsonschema.Draft202012Validator(schema()).validate(document)


def render_json(document: dict) -> bytes:
    validate(document)
    return (json.dumps(document, indent=2, allow_nan=False) + "\n").encode("utf-8")
