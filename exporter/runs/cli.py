"""`carbon-exporter run`, `compare` and `lifecycle`: the ML-run commands."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from typing import Any, Sequence

from exporter.confutil import ConfigError
from exporter.runs import DEFAULT_DAEMON_URL, PHASES, Run
from exporter.runs.proctree import become_subreaper
from exporter.runs.record import RecordError
from exporter.runs.summary import format_summary

EXIT_USAGE = 2
UNITS_FILE_ENV = "CARBON_EXPORTER_RUN_UNITS_FILE"
# Forwarded to the command; SIGCHLD only wakes the wait.
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2)
SI_USER, SI_QUEUE = 0, -1  # si_code of a signal sent by a process (kill, sigqueue)
SETTING_FLAGS = ("carbon.zone", "carbon.intensity", "carbon.pue", "sample.interval",
                 "path.procfs", "path.sysfs", "runs.socket")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _pairs(values: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{what} {item!r} is not KEY=VALUE")
        out[key] = value
    return out


def _param_value(text: str) -> Any:
    try:
        return float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        return text


def build_run_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="carbon-exporter run", description=(
        "Run COMMAND and measure its energy and gCO2e. Exits with COMMAND's exit code "
        "(128+N when a signal N ended it); signals to this process are forwarded to it. "
        "Daemon mode when an exporter runs on this node (--daemon, runs.socket), else "
        "embedded mode (sources sampled in this process). Exporter settings: the flags "
        "below, CARBON_EXPORTER_* variables or --config.file, as for the daemon."))
    parser.add_argument("--name", help="run name (default: the command's name); in daemon "
                        "mode also its workload_job label")
    parser.add_argument("--unit", help="functional unit counted (images, tokens, requests)")
    parser.add_argument("--units", type=float, default=None, metavar="N",
                        help="number of units, if known up front; the command may also add "
                             f"numbers, one a line, to the file named by ${UNITS_FILE_ENV}")
    parser.add_argument("--json", metavar="FILE", help="write the run record (JSON) here")
    parser.add_argument("--mlflow", action="store_true",
                        help="log the record to MLflow (MLFLOW_TRACKING_URI, MLFLOW_RUN_ID or "
                             "the active run); needs the mlflow extra")
    parser.add_argument("--model", help="the model this run belongs to (life-cycle roll-up)")
    parser.add_argument("--phase", choices=PHASES, help="life-cycle phase")
    parser.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--mode", choices=("auto", "embedded", "daemon"), default="auto")
    parser.add_argument("--daemon", default=DEFAULT_DAEMON_URL, metavar="URL",
                        help=f"the node's exporter (default {DEFAULT_DAEMON_URL})")
    parser.add_argument("--quiet", action="store_true", help="no summary on stderr")
    parser.add_argument("--config.file", dest="config_file", metavar="PATH")
    for key in SETTING_FLAGS:
        parser.add_argument("--" + key.replace("_", "-"), dest=key, default=None,
                            metavar="VALUE", help=f"exporter setting {key}")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="-- COMMAND [ARGS...]")
    return parser


def _read_units_file(path: str) -> float:
    total = 0.0
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    total += float(line.strip() or 0)
                except ValueError:
                    continue
    except OSError:
        pass
    return total


def _wait_forwarding(child: subprocess.Popen) -> tuple[int, int | None]:
    """Wait for the child, forwarding every signal a process sent us. A signal from the
    terminal (Ctrl-C) already reached the child, which shares our process group: not twice.
    Returns (returncode, the last forwarded terminating signal or None)."""
    received: int | None = None
    waited = set(FORWARDED) | {signal.SIGCHLD}
    while child.poll() is None:
        info = signal.sigtimedwait(waited, 0.5)
        if info is None or info.si_signo == signal.SIGCHLD:
            continue
        if info.si_signo in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            received = info.si_signo
        if info.si_code in (SI_USER, SI_QUEUE) and info.si_pid != child.pid:
            try:
                child.send_signal(info.si_signo)
            except ProcessLookupError:
                pass
    return child.returncode, received


def run_main(argv: Sequence[str]) -> int:
    parser = build_run_parser()
    args = parser.parse_args(list(argv))
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        parser.error("no command: carbon-exporter run [options] -- COMMAND [ARGS...]")
    level = os.environ.get("CARBON_EXPORTER_LOG_LEVEL", "warn").upper()
    logging.basicConfig(level=getattr(logging, "WARNING" if level == "WARN" else level,
                                      logging.WARNING),
                        format="carbon-exporter run: %(levelname)s %(name)s: %(message)s")
    settings = {k: getattr(args, k) for k in SETTING_FLAGS if getattr(args, k) is not None}
    try:
        tags = _pairs(args.tag, "--tag")
        params = {k: _param_value(v) for k, v in _pairs(args.param, "--param").items()}
        run = Run(args.name or os.path.basename(command[0]), unit=args.unit, json=args.json,
                  mlflow=args.mlflow, model=args.model, phase=args.phase, tags=tags,
                  params=params, mode=args.mode, daemon_url=args.daemon,
                  settings=settings, config_file=args.config_file, pid=os.getpid(),
                  include_root=False, command=command)
    except (ConfigError, ValueError) as exc:
        print(f"carbon-exporter run: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    # Block the signals before any thread starts, so that every thread inherits the mask and
    # only the sigtimedwait below takes them; the command gets an empty mask again.
    blocked = set(FORWARDED) | {signal.SIGCHLD}
    signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    become_subreaper()
    units_file = None
    try:
        try:
            run.start()
        except (ConfigError, RuntimeError) as exc:
            print(f"carbon-exporter run: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        if args.unit:
            units_file = f"{args.json or '.carbon-run'}.units.{os.getpid()}"
            open(units_file, "w").close()
        env = dict(os.environ)
        if units_file:
            env[UNITS_FILE_ENV] = os.path.abspath(units_file)
        if args.mlflow:
            try:
                if not os.environ.get("MLFLOW_RUN_ID"):
                    from exporter.runs.mlflow_log import start_run

                    # the command's own MLflow logging (mlflow.start_run()) joins this run
                    env["MLFLOW_RUN_ID"] = start_run(run.name)
                run.mlflow_run_id = env["MLFLOW_RUN_ID"]
            except Exception as exc:
                run.stop("failed", f"MLflow: {exc}")
                print(f"carbon-exporter run: error: MLflow: {exc}", file=sys.stderr)
                return EXIT_USAGE
        try:
            child = subprocess.Popen(
                command, env=env,
                preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked))
        except OSError as exc:
            run.exit_code = 127 if isinstance(exc, FileNotFoundError) else 126
            run.stop("failed", f"{type(exc).__name__}: {exc}")
            print(f"carbon-exporter run: cannot run {command[0]}: {exc.strerror}", file=sys.stderr)
            return run.exit_code
        returncode, received = _wait_forwarding(child)
        run.exit_code = returncode
        if units_file:
            run.add_units(_read_units_file(units_file))
        if args.units:
            run.add_units(args.units)
        if received is not None and returncode != 0:
            status = "interrupted"
        else:
            status = "completed" if returncode == 0 else "failed"
        error = None if returncode >= 0 else f"killed by signal {-returncode}"
        try:
            record = run.stop(status, error)
        except (RecordError, OSError, RuntimeError) as exc:
            print(f"carbon-exporter run: error: the record could not be written: {exc}",
                  file=sys.stderr)
            return returncode if returncode >= 0 else 128 - returncode
        if not args.quiet:
            print(format_summary(record), file=sys.stderr)
        return returncode if returncode >= 0 else 128 - returncode
    finally:
        if units_file:
            try:
                os.unlink(units_file)
            except OSError:
                pass
        signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)


def _write_output(text: str, path: str | None) -> None:
    if path:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
    else:
        sys.stdout.write(text)


def _records(paths: list[str], experiment: str | None, tags: list[str],
             what: str) -> list[dict[str, Any]]:
    from exporter.runs.record import load_record

    records = [load_record(p) for p in paths]
    if experiment:
        from exporter.runs.mlflow_log import records_from_mlflow

        records += records_from_mlflow(experiment, _pairs(tags, what))
    return records


def build_compare_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="carbon-exporter compare", description=(
        "Energy and gCO2e per unit of two groups of runs (run records, or MLflow runs by "
        "experiment and tag): the difference in percent with a 95%% confidence interval "
        "(Welch) and a plain verdict."))
    parser.add_argument("records", nargs="*", metavar="A.json", help="group A's run records")
    parser.add_argument("--against", nargs="+", default=[], metavar="B.json",
                        help="group B's run records: the baseline")
    parser.add_argument("--mlflow-experiment", metavar="NAME",
                        help="read records of this MLflow experiment's runs "
                             "(MLFLOW_TRACKING_URI), selected by --tag / --against-tag")
    parser.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                        help="MLflow run tag selecting group A")
    parser.add_argument("--against-tag", action="append", default=[], metavar="KEY=VALUE",
                        help="MLflow run tag selecting group B")
    parser.add_argument("--label-a", default=None, help="name of group A in the output")
    parser.add_argument("--label-b", default=None, help="name of group B in the output")
    parser.add_argument("--threshold", type=float, default=2.0, metavar="PERCENT",
                        help="smallest difference called (default 2)")
    parser.add_argument("--format", choices=("markdown", "json"), default="markdown")
    parser.add_argument("--output", metavar="FILE", help="write here instead of stdout")
    return parser


def compare_main(argv: Sequence[str]) -> int:
    import json

    from exporter.runs.compare import compare, render_markdown

    args = build_compare_parser().parse_args(list(argv))
    if args.mlflow_experiment and not (args.tag and args.against_tag) and not args.against:
        print("carbon-exporter compare: error: --mlflow-experiment needs --tag and "
              "--against-tag", file=sys.stderr)
        return EXIT_USAGE
    try:
        a = _records(args.records, args.mlflow_experiment if args.tag else None, args.tag, "--tag")
        b = _records(args.against, args.mlflow_experiment if args.against_tag else None,
                     args.against_tag, "--against-tag")
    except (RecordError, ConfigError, ValueError, RuntimeError) as exc:
        print(f"carbon-exporter compare: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not a or not b:
        print("carbon-exporter compare: error: both groups need runs (A.json ... --against "
              "B.json ...)", file=sys.stderr)
        return EXIT_USAGE
    label_a = args.label_a or ",".join(args.tag) or "A"
    label_b = args.label_b or ",".join(args.against_tag) or "B"
    result = compare(a, b, label_a, label_b, args.threshold)
    text = json.dumps(result, indent=2) + "\n" if args.format == "json" else render_markdown(result)
    _write_output(text, args.output)
    return 0


def build_lifecycle_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="carbon-exporter lifecycle", description=(
        "Sum every run of a model by life-cycle phase, operational and embodied, into a "
        "footprint statement to publish with the model (a model-card section)."))
    parser.add_argument("records", nargs="*", metavar="RUN.json")
    parser.add_argument("--model", help="the model (default: the one all records name)")
    parser.add_argument("--mlflow-experiment", metavar="NAME",
                        help="also read the records of this MLflow experiment's runs")
    parser.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                        help="only MLflow runs with this tag")
    parser.add_argument("--format", choices=("markdown", "json"), default="markdown")
    parser.add_argument("--output", metavar="FILE", help="write here instead of stdout")
    return parser


def lifecycle_main(argv: Sequence[str]) -> int:
    import json

    from exporter.runs.lifecycle import RollupError, render_markdown, rollup

    args = build_lifecycle_parser().parse_args(list(argv))
    try:
        records = _records(args.records, args.mlflow_experiment, args.tag, "--tag")
        doc = rollup(records, args.model)
    except (RecordError, RollupError, ConfigError, ValueError, RuntimeError) as exc:
        print(f"carbon-exporter lifecycle: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    text = json.dumps(doc, indent=2) + "\n" if args.format == "json" else render_markdown(doc)
    _write_output(text, args.output)
    return 0


def main(argv: Sequence[str]) -> int:
    """Entry from exporter.cli: argv[0] is the subcommand."""
    command, rest = argv[0], list(argv[1:])
    if command == "run":
        return run_main(rest)
    if command == "compare":
        return compare_main(rest)
    if command == "lifecycle":
        return lifecycle_main(rest)
    raise SystemExit(f"unknown subcommand {command}")
