#!/usr/bin/env python3
"""Regenerate the README's settings and metrics tables from exporter.config and exporter.metrics.

    python scripts/gen_readme.py          # rewrite README.md in place
    python scripts/gen_readme.py --check  # exit 1 if README.md is out of date (the tests run this)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exporter import metrics  # noqa: E402
from exporter.carbon.providers.spec import provider_types  # noqa: E402
from exporter.config import SETTINGS  # noqa: E402
from exporter.sources.registry import registered  # noqa: E402


def settings_table() -> str:
    rows = ["| flag | config key | environment | default | reload | meaning |",
            "|---|---|---|---|---|---|"]
    rows.append("| `--config.file` | | `CARBON_EXPORTER_CONFIG_FILE` | | | YAML file with the settings below |")
    for s in SETTINGS:
        flag = f"`{s.flag}` / `--no-{s.flag[2:]}`" if s.kind == "bool" else f"`{s.flag}`"
        default = "" if s.default is None else f"`{s.default}`"
        reload = "yes" if s.reloadable else ""
        rows.append(f"| {flag} | `{s.key}` | `{s.env}` | {default} | {reload} | {s.help} |")
    return "\n".join(rows)


def metrics_table() -> str:
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for m in metrics.ALL:
        labels = ", ".join(f"`{label}`" for label in m.labels)
        rows.append(f"| `{m.name}` | {m.type} | {labels} | {m.help} |")
    return "\n".join(rows)


def collectors_table() -> str:
    rows = ["| collector | role | default | provides | source label | what it reads |",
            "|---|---|---|---|---|---|"]
    for cls in registered():
        labels = " or ".join(f"`{label}`" for label in cls.source_labels)
        provides = ", ".join(sorted(cls.provides))
        default = "on" if cls.default_enabled else "off"
        rows.append(f"| `{cls.name}` | {cls.role} | {default} | {provides} | "
                    f"{labels} | {cls.summary} |")
    return "\n".join(rows)


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "never"
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def providers_table() -> str:
    rows = ["| type | refresh | max_age | auth | what it reads (units) |", "|---|---|---|---|---|"]
    for kind, cls in provider_types().items():
        refresh = _duration(cls.refresh) if cls.live else ""
        rows.append(f"| `{kind}` | {refresh} | {_duration(cls.max_age)} | {cls.auth} | "
                    f"{cls.summary} |")
    return "\n".join(rows)


SECTIONS = {"settings": settings_table, "metrics": metrics_table,
            "collectors": collectors_table, "providers": providers_table}


def render(text: str) -> str:
    for name, build in SECTIONS.items():
        pattern = re.compile(
            rf"(<!-- BEGIN GENERATED: {name} -->\n).*?(<!-- END GENERATED: {name} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"README.md has no generated section {name!r}")
        table = build()
        text = pattern.sub(lambda m, table=table: m.group(1) + table + "\n" + m.group(2), text)
    return text


def main() -> int:
    path = ROOT / "README.md"
    current = path.read_text(encoding="utf-8")
    wanted = render(current)
    if "--check" in sys.argv[1:]:
        if wanted != current:
            print("README.md is out of date: run python scripts/gen_readme.py", file=sys.stderr)
            return 1
        return 0
    path.write_text(wanted, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
