#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment outside the clone.
# The environment is ~7 GB (torch), so it is keyed by a hash of the dependency files and
# shared by every clone on the machine: repeated CI runs reuse it instead of filling the disk.
# usage: scripts/setup-env.sh VENV_DIR
set -euo pipefail
venv=${1:?usage: setup-env.sh VENV_DIR}
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3.11}
command -v "$py" >/dev/null || py=python3

# The stamp is written last: an interrupted set-up is detected and redone from scratch.
# (A venv cannot be renamed into place: its scripts hard-code their own path.)
if [ ! -f "$venv/.deps-installed" ]; then
    echo "==> creating environment $venv (first run: several minutes, ~7 GB)"
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    "$py" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip setuptools wheel
    # torch is pinned: an unpinned torch pulls another multi-GB build.
    "$venv/bin/python" -m pip install -q -c "$root/requirements.lock" "$root[ui,ray,dev]"
    "$venv/bin/python" -m pip uninstall -q -y threads-search
    touch "$venv/.deps-installed"
fi
# The project itself is installed editable from *this* clone (seconds, no dependency resolution).
"$venv/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$root" 2>&1 | grep -v "^$" || true
"$venv/bin/python" -c "import threads_search" || { echo "threads_search failed to import" >&2; exit 1; }

# Debian packages the tests use: chromium for the UI tests, strace for the test that proves a
# local Ray connects nowhere outside loopback (needs root; CI runs as root).
missing=()
[ -x /usr/bin/chromium ] || [ "${THREADS_SEARCH_SKIP_BROWSER:-0}" = 1 ] || missing+=(chromium chromium-driver)
command -v strace >/dev/null || missing+=(strace)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        echo "==> installing ${missing[*]} (apt)"
        apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
    else
        echo "warning: missing ${missing[*]}; run: sudo apt-get install ${missing[*]}" >&2
    fi
fi
