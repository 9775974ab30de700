#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs mirror and its test tools, starts the DaCHS
# upstream once (row limits 500/1000 so the harvester must page), runs pytest.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not integration"`.
set -uo pipefail
cd "$(dirname "$0")/.."

# torch==2.13.0 is the CPU wheel on disk; the ml extra pins it so nothing pulls a CUDA build
python3 -m pip install --quiet --disable-pip-version-check -e ".[test,ml]" || exit 1
if [ "$(id -u)" = 0 ]; then
    # what the tests drive: a real browser (the schema site) and a TAP validator (taplint)
    missing=""
    command -v chromium >/dev/null || missing="$missing chromium"
    command -v stilts >/dev/null || missing="$missing stilts"
    if [ -n "$missing" ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing \
            >/dev/null || exit 1
    fi
    UPSTREAM_DEFAULT_MAXREC=500 UPSTREAM_HARD_MAXREC=1000 bash tests/upstream/start.sh || exit 1
    export MIRROR_UPSTREAM_READY=1
fi
python3 -m pytest tests -p no:cacheprovider "$@"
rc=$?
if [ "$rc" = 5 ]; then
    echo "pytest collected no tests: that is a failure here" >&2
    exit 1
fi
exit "$rc"
