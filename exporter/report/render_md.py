"""Markdown (GitHub flavour); the charts are image files in a folder beside the report."""

from __future__ import annotations

from exporter.report import charts, sections


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_md(document: dict, images: dict[str, charts.Image], folder: str | None) -> bytes:
    q = document["query"]
    lines = ["# Carbon footprint report", "",
             f"`{q['selector']}` · {q['from']} to {q['to']} · Prometheus {q['prometheus']} · "
             f"generated {document['generated_at']} by {document['generator']['name']} "
             f"{document['generator']['version']} (schema {document['schema_version']})", ""]
    for section in sections.build(document):
        lines += [f"## {section.title}", ""]
        for paragraph in section.paragraphs:
            lines += [paragraph, ""]
        if section.items:
            lines += [f"- {item}" for item in section.items] + [""]
        for table in section.tables:
            lines.append("| " + " | ".join(map(_escape, table.headers)) + " |")
            lines.append("|" + "---|" * len(table.headers))
            lines += ["| " + " | ".join(map(_escape, row)) + " |" for row in table.rows]
            lines.append("")
        for name in section.charts:
            image = images.get(name)
            if image is not None and folder:
                lines += [f"![{image.title}]({folder}/{name}.{image.ext})", ""]
            elif not charts.available():
                lines += [f"_{charts.MISSING}_", ""]
            elif image is not None:
                lines += [f"_chart {image.title!r}: written as a file only with --output_", ""]
    return "\n".join(lines).encode("utf-8")
