"""A single self-contained HTML file: inline CSS, charts embedded as data: URIs, no scripts
and nothing fetched from the network."""

from __future__ import annotations

import base64
from html import escape

from exporter.report import charts, sections

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:60rem;
color:#1b1f24;line-height:1.45;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{border-bottom:1px solid #d0d7de;padding-bottom:.2rem;
margin-top:2rem}table{border-collapse:collapse;margin:.8rem 0;font-size:.9rem}
th,td{border:1px solid #d0d7de;padding:.25rem .6rem;text-align:left;vertical-align:top}
th{background:#f6f8fa}td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{margin:1rem 0}figure img{max-width:100%;height:auto}.meta{color:#57606a;font-size:.9rem}
"""


def _cell(text: str, header: bool = False) -> str:
    tag = "th" if header else "td"
    numeric = not header and (text[:1].isdigit() or text[:1] == "-" and text[1:2].isdigit())
    attr = ' class="num"' if numeric else ""
    return f"<{tag}{attr}>{escape(text)}</{tag}>"


def render_html(document: dict, images: dict[str, charts.Image]) -> bytes:
    q = document["query"]
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # Self-contained by construction: the browser may load nothing but inline data.
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        'img-src data:; style-src \'unsafe-inline\'">',
        f"<title>Carbon footprint report: {escape(q['selector'])}</title>",
        f"<style>{_CSS}</style>", "</head>", "<body>",
        "<h1>Carbon footprint report</h1>",
        f'<p class="meta">{escape(q["selector"])} &middot; {escape(q["from"])} to '
        f'{escape(q["to"])} &middot; Prometheus {escape(q["prometheus"])} &middot; generated '
        f'{escape(document["generated_at"])} by {escape(document["generator"]["name"])} '
        f'{escape(document["generator"]["version"])} (schema {document["schema_version"]})</p>',
    ]
    for section in sections.build(document):
        parts.append(f"<section><h2>{escape(section.title)}</h2>")
        parts += [f"<p>{escape(p)}</p>" for p in section.paragraphs]
        if section.items:
            parts.append("<ul>" + "".join(f"<li>{escape(i)}</li>" for i in section.items)
                         + "</ul>")
        for table in section.tables:
            parts.append("<table><thead><tr>" + "".join(_cell(h, True) for h in table.headers)
                         + "</tr></thead><tbody>")
            parts += ["<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in table.rows]
            parts.append("</tbody></table>")
        for name in section.charts:
            image = images.get(name)
            if image is None:
                if not charts.available():
                    parts.append(f"<p class=\"meta\">{escape(charts.MISSING)}</p>")
                continue
            data = base64.b64encode(image.data).decode("ascii")
            # the chart draws its own title: no caption repeating it
            parts.append(f'<figure><img alt="{escape(image.title)}" '
                         f'src="data:{image.mime};base64,{data}"></figure>')
        parts.append("</section>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts).encode("utf-8")
