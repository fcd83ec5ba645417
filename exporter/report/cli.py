"""`carbon-exporter report`: flags, time parsing, selector building, atomic output."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

from exporter.confutil import parse_duration
from exporter.report.compute import DEFAULT_WHAT_IF_ZONES, Report, ReportError, Request
from exporter.report.promapi import Auth, PrometheusError, PromClient, quote

EXIT_FAILURE = 1
EXIT_USAGE = 2

# One PromQL label matcher: name, operator, double- or single-quoted value.
_MATCHER = re.compile(r"""\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*
                          ("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')\s*""", re.VERBOSE)
_WORKLOAD_LABELS = {"namespace", "pod", "container", "unit", "workload_job"}


class UsageError(ValueError):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="carbon-exporter report",
        description="Audit-ready energy and carbon report of a node or workload, computed "
                    "from Prometheus history (the exporter itself is not needed).",
        epilog="Examples: carbon-exporter report --prometheus http://prom:9090 --namespace ml "
               "--from 30d --format html --output ml.html;  carbon-exporter report "
               "--prometheus http://prom:9090 --selector 'instance=~\"gpu-.*\"' --from "
               "2024-01-01T00:00:00Z --to 2024-04-01T00:00:00Z --format json")
    parser.add_argument("--prometheus", required=True, metavar="URL",
                        help="Prometheus base URL, e.g. http://localhost:9090")
    what = parser.add_argument_group("what to report on (combined with AND)")
    what.add_argument("--node", metavar="INSTANCE", help="instance label of the exporter target")
    what.add_argument("--namespace", help="Kubernetes namespace (attributed workload energy)")
    what.add_argument("--pod", help="pod name (attributed workload energy)")
    what.add_argument("--workload-job", metavar="JOB", help="batch job (workload_job label)")
    what.add_argument("--selector", action="append", default=[], metavar="MATCHERS",
                      help="PromQL label matchers, e.g. 'job=\"gpu\",instance=~\"a.*\"' "
                           "(repeatable); workload labels (namespace, pod, container, unit, "
                           "workload_job) select attributed workload energy")
    when = parser.add_argument_group("when")
    when.add_argument("--from", dest="start", default="1d", metavar="TIME",
                      help="RFC 3339 time or a duration before --to such as 30d (default: 1d)")
    when.add_argument("--to", dest="end", default="now", metavar="TIME",
                      help="RFC 3339 time, 'now' (default) or a duration before now")
    out = parser.add_argument_group("output")
    out.add_argument("--format", choices=("html", "md", "json"), default="html")
    out.add_argument("--output", metavar="FILE",
                     help="write here (atomically; Markdown images go to FILE_files/); "
                          "default: stdout, without images for Markdown")
    tune = parser.add_argument_group("report parameters")
    tune.add_argument("--what-if-zones", default=",".join(DEFAULT_WHAT_IF_ZONES),
                      metavar="ZONES", help="comma-separated zones of the bundled dataset "
                                            "for the what-if table (default: %(default)s)")
    tune.add_argument("--stale-after", default="1h", metavar="DURATION",
                      help="intensity older than this counts as stale (default: 1h)")
    tune.add_argument("--query-timeout", default="60s", metavar="DURATION",
                      help="timeout of each Prometheus query (default: 60s)")
    tune.add_argument("--chunk", default="6h", metavar="DURATION",
                      help="window of raw samples fetched per query (default: 6h)")
    auth = parser.add_argument_group("secured Prometheus")
    auth.add_argument("--prometheus.username", dest="username", metavar="USER")
    auth.add_argument("--prometheus.password-file", dest="password_file", metavar="FILE",
                      help="file holding the basic-auth password (or env "
                           "CARBON_REPORT_PASSWORD)")
    auth.add_argument("--prometheus.bearer-token-file", dest="token_file", metavar="FILE",
                      help="file holding a bearer token (or env CARBON_REPORT_BEARER_TOKEN)")
    auth.add_argument("--prometheus.ca-file", dest="ca_file", metavar="FILE",
                      help="CA bundle to verify the server certificate")
    auth.add_argument("--prometheus.cert-file", dest="cert_file", metavar="FILE",
                      help="client certificate (mutual TLS)")
    auth.add_argument("--prometheus.key-file", dest="key_file", metavar="FILE",
                      help="client certificate key (mutual TLS)")
    auth.add_argument("--prometheus.insecure-skip-verify", dest="insecure",
                      action="store_true", help="do not verify the server certificate")
    return parser


def parse_time(text: str, now: float, relative_to: float | None = None) -> float:
    """RFC 3339, 'now', a unix timestamp, or a duration before `relative_to` (default now)."""
    text = text.strip()
    if text == "now":
        return now
    try:
        seconds = parse_duration(text)
    except ValueError:
        seconds = None
    if seconds is not None and not re.fullmatch(r"\d{9,}(\.\d+)?", text):
        return (now if relative_to is None else relative_to) - seconds
    if re.fullmatch(r"\d{9,}(\.\d+)?", text):
        return float(text)
    try:
        moment = dt.datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise UsageError(f"{text!r} is not an RFC 3339 time (2024-05-01T00:00:00Z), 'now' "
                         f"or a duration such as 30d") from None
    if moment.tzinfo is None:
        raise UsageError(f"{text!r} has no time zone: add Z or an offset such as +02:00")
    return moment.timestamp()


def parse_matchers(text: str) -> list[str]:
    body = text.strip()
    if body.startswith("{") and body.endswith("}"):
        body = body[1:-1]
    matchers, position = [], 0
    while position < len(body):
        match = _MATCHER.match(body, position)
        if not match:
            raise UsageError(f"--selector {text!r}: expected label matchers such as "
                             f"namespace=\"ml\" or instance=~\"gpu-.*\"")
        matchers.append(f"{match.group(1)}{match.group(2)}{match.group(3)}")
        position = match.end()
        if position < len(body):
            if body[position] != ",":
                raise UsageError(f"--selector {text!r}: matchers must be separated by commas")
            position += 1
    return matchers


def build_request(args: argparse.Namespace, now: float) -> Request:
    matchers = []
    if args.node:
        matchers.append(f"instance={quote(args.node)}")
    for label, value in (("namespace", args.namespace), ("pod", args.pod),
                         ("workload_job", args.workload_job)):
        if value:
            matchers.append(f"{label}={quote(value)}")
    for text in args.selector:
        matchers += parse_matchers(text)
    if not matchers:
        raise UsageError("say what to report on: --node, --namespace, --pod, --workload-job "
                         "or --selector")
    labels = {found.group(0) for m in matchers
              if (found := re.match(r"[a-zA-Z_][a-zA-Z0-9_]*", m)) is not None}
    end = parse_time(args.end, now)
    start = parse_time(args.start, now, relative_to=end)
    if start >= end:
        raise UsageError(f"empty window: --from ({args.start}) must be before --to ({args.end})")
    zones = tuple(z.strip().upper() for z in args.what_if_zones.split(",") if z.strip())
    from exporter.carbon import grid_dataset
    unknown = [z for z in zones if z not in grid_dataset()]
    if unknown:
        raise UsageError(f"--what-if-zones: {', '.join(unknown)} not in the bundled dataset "
                         f"(ISO 3166-1 alpha-2 codes or WORLD)")
    try:
        stale_after = parse_duration(args.stale_after)
    except ValueError as exc:
        raise UsageError(f"--stale-after: {exc}") from None
    return Request(prometheus=args.prometheus, matchers=matchers, start=start, end=end,
                   workload=bool(labels & _WORKLOAD_LABELS), zones=zones,
                   stale_after=stale_after)


def _secret(path: str | None, env: str) -> str | None:
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    return os.environ.get(env)


def build_client(args: argparse.Namespace) -> PromClient:
    try:
        timeout = parse_duration(args.query_timeout)
        chunk = parse_duration(args.chunk)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if timeout <= 0 or chunk <= 0:
        raise UsageError("--query-timeout and --chunk must be positive")
    auth = Auth(username=args.username,
                password=_secret(args.password_file, "CARBON_REPORT_PASSWORD"),
                bearer_token=_secret(args.token_file, "CARBON_REPORT_BEARER_TOKEN"),
                ca_file=args.ca_file, cert_file=args.cert_file, key_file=args.key_file,
                insecure_skip_verify=args.insecure)
    return PromClient(args.prometheus, auth, timeout=timeout, chunk_seconds=chunk)


def render(document: dict, fmt: str, output: Path | None) -> tuple[bytes, dict[str, bytes]]:
    """The report body and, for Markdown with --output, the image files beside it."""
    if fmt == "json":
        from exporter.report.render_json import render_json
        return render_json(document), {}
    from exporter.report import charts
    images = charts.render_all(document, "png" if fmt == "md" else "svg")
    if fmt == "html":
        from exporter.report.render_html import render_html
        return render_html(document, images), {}
    from exporter.report.render_md import render_md
    folder = f"{output.stem}_files" if output is not None else None
    text = render_md(document, images, folder)
    files = {f"{folder}/{name}.{image.ext}": image.data
             for name, image in images.items()} if folder else {}
    return text, files


def write_atomically(output: Path, body: bytes, files: dict[str, bytes]) -> None:
    """Images first, the report last, each through a temporary file and a rename: a reader
    never sees a half-written report under the final name."""
    directory = output.parent if str(output.parent) else Path(".")
    for relative, data in files.items():
        target = directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        _replace(target, data)
    _replace(output, body)


def _replace(target: Path, data: bytes) -> None:
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial",
                                     dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException:
        os.unlink(temporary)
        raise


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    prog = "carbon-exporter report"
    try:
        request = build_request(args, time.time())
        client = build_client(args)
        output = Path(args.output) if args.output else None
        if output is not None and not output.parent.is_dir() and str(output.parent):
            raise UsageError(f"--output: directory {output.parent} does not exist")
    except (UsageError, PrometheusError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        document = Report(client, request).build()
        body, files = render(document, args.format, output)
        if output is None:
            sys.stdout.buffer.write(body)
            sys.stdout.flush()
        else:
            write_atomically(output, body, files)
    except (ReportError, PrometheusError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:
        print(f"{prog}: error: cannot write {args.output}: {exc.strerror or exc}",
              file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; nothing written", file=sys.stderr)
        return 130
    if output is not None:
        print(f"{prog}: wrote {output}", file=sys.stderr)
    return 0
