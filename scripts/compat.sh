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
  "$CVENV/bin/pip" install -q "ansible-core>=2.19,<2.20" dnspython pytest hypothesis
fi
echo "compat: $("$CVENV/bin/ansible" --version | head -1) on $("$CVENV/bin/python" --version)"
exec "$CVENV/bin/python" -m pytest -q -p no:cacheprovider tests/unit tests/netns "$@"
