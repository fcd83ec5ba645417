#!/bin/sh
# Bootstrap a fresh Debian/Ubuntu checkout: a venv in .venv with the project installed,
# and with --test-tools the Debian packages the tests use: `prometheus` (server + promtool),
# `prometheus-alertmanager` (amtool checks the example Alertmanager config), `chromium`
# (headless, to open the footprint report's HTML and the landing page), `systemd`
# (systemd-analyze for the unit checks) and `victoria-metrics` (the long-term store that
# remote_write is tested against). The packages' own services are not started: the tests
# run their own servers. Every missing package is installed (as root) or named (otherwise)
# in one go; apt waits up to 10 minutes for another apt/dpkg to release its lock.
# Idempotent: a second run only checks. Sourced-free: run it, it prints what it does.
set -eu
cd "$(dirname "$0")/.."

want_test_tools=no
[ "${1:-}" = "--test-tools" ] && want_test_tools=yes

is_root() { [ "$(id -u)" = 0 ]; }
apt_install() {
    if is_root; then
        echo "bootstrap: apt-get install $*" >&2
        # policy-rc.d 101: packages install without starting their daemons (Debian policy)
        policy=""
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            policy=/usr/sbin/policy-rc.d
            printf '#!/bin/sh\nexit 101\n' > "$policy"
            chmod 0755 "$policy"
        fi
        status=0
        # another apt (unattended-upgrades, a second bootstrap) may hold the lock: wait for it
        lock="-o DPkg::Lock::Timeout=600"
        # shellcheck disable=SC2086 # $lock is two words on purpose
        { DEBIAN_FRONTEND=noninteractive apt-get $lock update -qq &&
          DEBIAN_FRONTEND=noninteractive apt-get $lock install -y -qq --no-install-recommends "$@"; } >&2 ||
            status=$?
        [ -n "$policy" ] && rm -f "$policy"
        [ "$status" = 0 ] || exit "$status"
    else
        echo "bootstrap: missing Debian packages; run: sudo apt-get install -y $*" >&2
        exit 1
    fi
}

python=""
for candidate in python3.13 python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        python=$candidate
        break
    fi
done
if [ -z "$python" ]; then
    echo "bootstrap: Python 3.11 or newer is needed (Debian 12: apt-get install python3)" >&2
    exit 1
fi

# Every Debian package this run needs, gathered first so that one install (or one hint)
# names them all.
missing=""
if [ ! -x .venv/bin/python ] && ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
    missing="python3-venv"
fi
if [ "$want_test_tools" = yes ]; then
    if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
        missing="$missing prometheus"
    fi
    command -v amtool >/dev/null 2>&1 || missing="$missing prometheus-alertmanager"
    command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
    command -v systemd-analyze >/dev/null 2>&1 || missing="$missing systemd"
    command -v victoria-metrics >/dev/null 2>&1 || missing="$missing victoria-metrics"
fi
if [ -n "$missing" ]; then
    # shellcheck disable=SC2086 # word splitting wanted: one package per word
    apt_install $missing
fi

if [ ! -x .venv/bin/python ]; then
    echo "bootstrap: creating .venv with $python" >&2
    "$python" -m venv .venv
fi

# Reinstall only when the dependency list changed.
stamp=.venv/.carbon-exporter-installed
digest=$(cat pyproject.toml | cksum)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$digest" ]; then
    echo "bootstrap: installing carbon-exporter and its test extras into .venv" >&2
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' >&2
    echo "$digest" > "$stamp"
fi

# The exporter's own bytecode, as a wheel install or the container image has it: where
# PYTHONDONTWRITEBYTECODE is set, the daemon would otherwise compile its modules at every
# start (about 1.3 MiB more peak RSS, and a slower start). Only changed files are compiled
# again; a stale .pyc is never used (Python checks the source's mtime).
.venv/bin/python -m compileall -q exporter >/dev/null \
    || echo "bootstrap: could not write the exporter's bytecode; it runs from source" >&2
