"""Version, revision and build date, printed by `--version` the way node_exporter prints them
and exported in carbon_exporter_build_info.

An installed build (wheel, container image) carries `exporter/_build.json`, written once at
build time by `python -m exporter.version --write` (the Dockerfile does). A source checkout
has none: the revision and date are then the checkout's HEAD commit, asked of git once.
"""

from __future__ import annotations

import functools
import json
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from exporter import __version__

BUILD_FILE = Path(__file__).with_name("_build.json")
UNKNOWN = "unknown"


@dataclass(frozen=True)
class BuildInfo:
    version: str
    revision: str
    branch: str
    builddate: str  # node_exporter's format: 20240714-11:53:45 (UTC)
    builduser: str


def _git(*args: str) -> str:
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return ""
    try:
        result = subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                                text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""


def from_git() -> BuildInfo:
    revision = _git("rev-parse", "HEAD")
    stamp = _git("log", "-1", "--format=%ct")
    date = time.strftime("%Y%m%d-%H:%M:%S", time.gmtime(int(stamp))) if stamp else UNKNOWN
    if revision and _git("status", "--porcelain", "--untracked-files=no"):
        revision += "-dirty"
    return BuildInfo(__version__, revision or UNKNOWN,
                     _git("rev-parse", "--abbrev-ref", "HEAD") or UNKNOWN, date, UNKNOWN)


@functools.cache
def build_info() -> BuildInfo:
    try:
        data = json.loads(BUILD_FILE.read_text())
        return BuildInfo(__version__, str(data.get("revision", UNKNOWN)),
                         str(data.get("branch", UNKNOWN)), str(data.get("builddate", UNKNOWN)),
                         str(data.get("builduser", UNKNOWN)))
    except (OSError, ValueError, AttributeError):
        return from_git()


def version_text(program: str = "carbon-exporter") -> str:
    info = build_info()
    return (f"{program}, version {info.version} (branch: {info.branch}, revision: {info.revision})\n"
            f"  build user:       {info.builduser}\n"
            f"  build date:       {info.builddate}\n"
            f"  python version:   {platform.python_implementation()} {platform.python_version()}\n"
            f"  platform:         {sys.platform}/{platform.machine().lower()}")


def write_build_file(revision: str | None = None, builddate: str | None = None) -> BuildInfo:
    """Freeze the revision and the build time into exporter/_build.json (at build time)."""
    git = from_git()
    info = BuildInfo(__version__, revision or git.revision, git.branch,
                     builddate or time.strftime("%Y%m%d-%H:%M:%S", time.gmtime()),
                     UNKNOWN)
    BUILD_FILE.write_text(json.dumps(asdict(info), indent=1) + "\n")
    return info


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--write"]:
        # optional: --write REVISION (the image build has no .git to ask)
        info = write_build_file(args[1] if len(args) > 1 and args[1] else None)
        print(f"wrote {BUILD_FILE}: revision {info.revision}, build date {info.builddate}")
        return 0
    print(version_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
