#!/usr/bin/env bash
# The oldest supported controller: ansible-core 2.19 on Python 3.11 (meta/runtime.yml says >=2.19).
# Runs the unit and namespace integration tests with it, so requires_ansible is tested, not claimed.
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$ROOT"
CVENV=$ROOT/.cache/venv-compat
PY311=""
for cand in "$(pyenv root 2>/dev/null || echo /root/.pyenv)"/versions/3.11*/bin/python3 /usr/bin/python3.11 python3.11; do
  if [ -x "$cand" ] || command -v "$cand" >/dev/null 2>&1; then PY311=$cand; break; fi
done
[ -n "$PY311" ] || { echo "compat: no Python 3.11 found" >&2; exit 1; }
if [ ! -x "$CVENV/bin/ansible-playbook" ]; then
  "$PY311" -m venv "$CVENV"
  "$CVENV/bin/pip" install -q --upgrade pip
  "$CVENV/bin/pip" install -q "ansible-core>=2.19,<2.20" pytest hypothesis
fi
"$CVENV/bin/python" -c 'import xdist' 2>/dev/null || "$CVENV/bin/pip" install -q pytest-xdist
# dnspython as Debian 12 ships it on the hosts: before 2.4 it picks its optional transports by trying
# their imports (the module hides them while it loads), from 2.4 by package metadata (the main venv's).
DNSPYTHON=2.3.0
if [ "$("$CVENV/bin/python" -c 'import dns.version; print(dns.version.version)' 2>/dev/null)" != "$DNSPYTHON" ]; then
  "$CVENV/bin/pip" install -q "dnspython==$DNSPYTHON"
fi
echo "compat: $("$CVENV/bin/ansible" --version | head -1) on $("$CVENV/bin/python" --version), dnspython $DNSPYTHON"
# The unit tests on every core, the namespace tests as scripts/netns.sh runs them (it says why).
"$CVENV/bin/python" -m pytest -q -p no:cacheprovider -n auto tests/unit "$@"
NETNS_PYTHON=$CVENV/bin/python exec bash scripts/netns.sh "$@"
