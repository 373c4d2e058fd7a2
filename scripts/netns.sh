#!/usr/bin/env bash
# The namespace integration tests (tests/netns), in two passes:
#   1. every test that does not read the kernel's log, side by side on NETNS_JOBS pytest-xdist workers
#      (default 4: they mostly wait on connection timeouts and servers, the machine's load stays under 1
#      when they run one at a time; each test's namespaces are its own);
#   2. the tests that read it (marked kernel_log, tests/netns/conftest.py), one at a time: dmesg and
#      nf_log_all_netns are the machine's and every lab has the same addresses, so beside each other one
#      test would count another's LOG lines. Their fixture refuses to run with more than one worker.
# Each pass fails when it collects no test (pytest's exit 5).
#   scripts/netns.sh [pytest args...]     NETNS_PYTHON=python (scripts/compat.sh passes its own), NETNS_JOBS=4
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$ROOT"
PY=${NETNS_PYTHON:-python}
JOBS=${NETNS_JOBS:-4}
[[ "$JOBS" =~ ^[1-9][0-9]*$ ]] || { echo "netns.sh: NETNS_JOBS must be a positive integer, not '$JOBS'" >&2; exit 2; }
"$PY" -m pytest -q -p no:cacheprovider -n "$JOBS" -m "not kernel_log" tests/netns "$@"
exec "$PY" -m pytest -q -p no:cacheprovider -m kernel_log tests/netns "$@"
