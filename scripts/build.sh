#!/usr/bin/env bash
# Build the collection tarball and install it into a scratch collections path, then make
# sure the installed copy is usable: ansible-doc renders the module and the role's
# argument specs load.
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$ROOT"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
ansible-galaxy collection build --force --output-path "$out" . >/dev/null
tarball=$(ls "$out"/agentguard-hardening-*.tar.gz)
ansible-galaxy collection install --force -p "$out/installed" "$tarball" >/dev/null 2>&1
ANSIBLE_COLLECTIONS_PATH="$out/installed" ansible-doc agentguard.hardening.egress_rules >/dev/null
if [ -d roles/egress ]; then
  ANSIBLE_COLLECTIONS_PATH="$out/installed" ansible-doc -t role agentguard.hardening.egress >/dev/null
fi
echo "build: ok ($(basename "$tarball"), $(tar -tzf "$tarball" | wc -l) files; installed and documented)"
