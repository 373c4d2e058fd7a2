#!/usr/bin/env bash
# ansible-test sanity on the collection as a Galaxy user installs it: the tarball built from the working
# tree (only what galaxy.yml's build_ignore lets through), installed into .cache/sanity, which gives
# ansible-test the ansible_collections/<namespace>/<name> layout it needs. The tests, scripts, lab and
# Molecule are not in the tarball, so not sanity-tested here (ansible-lint and pytest cover them).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${SANITY_VENV:-$ROOT/.cache/venv-sanity}
# A virtualenv of its own: ansible-test installs its sanity requirements next to ansible-core.
if [ ! -x "$VENV/bin/ansible-test" ]; then
  "$(readlink -f "$ROOT/.venv/bin/python")" -m venv "$VENV"
  "$VENV/bin/pip" install -q "$("$ROOT/.venv/bin/pip" freeze | grep '^ansible-core==')"
fi
PY=${SANITY_PYTHON:-$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')}
# ansible-test bootstraps pip in its virtualenvs with a script from a host we cannot reach.
pipver=$("$VENV/bin/python" -c 'import re, ansible_test._internal.python_requirements as r, inspect
print(re.search(r"pip=.([0-9.]+)", inspect.getsource(r.get_venv_packages)).group(1))' 2>/dev/null || true)
if [ -n "$pipver" ]; then
  mkdir -p ~/.ansible/test/cache
  cp scripts/get_pip_offline.py ~/.ansible/test/cache/"get_pip_${pipver//./_}.py"
fi
DEST=$ROOT/.cache/sanity/ansible_collections/agentguard/hardening
bash scripts/install_collection.sh "$ROOT/.cache/sanity" >/dev/null
cd "$DEST"
git init -q && git add -A   # ansible-test uses git to list the collection's files
export PATH="$VENV/bin:$PATH"
ansible-test sanity --requirements --python "$PY" --color no "$@"
# Modules run on the targets' Python (Debian 11: 3.9): compile them with every older Python we have.
for old in 3.9 3.10 3.11 3.12; do
  [ "$old" != "$PY" ] || continue
  bin=$(printf '%s\n' "$(pyenv root 2>/dev/null || echo /root/.pyenv)"/versions/"$old".*/bin | sort -V | tail -n 1)
  if [ -n "$bin" ] && [ -x "$bin/python$old" ]; then
    PATH="$bin:$PATH" ansible-test sanity --test compile --python "$old" --color no
  fi
done
