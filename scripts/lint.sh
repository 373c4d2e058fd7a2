#!/usr/bin/env bash
# ansible-lint (production profile) on the checkout (which also holds Molecule, the lab and the benches),
# then on the collection as a Galaxy user installs it (built tarball, installed into an empty collections
# path, no ansible.cfg of this checkout), then antsibull-changelog lint.
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$ROOT"
ansible-lint --profile production
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
scripts/install_collection.sh "$out/collections" >/dev/null
printf '[defaults]\n' > "$out/ansible.cfg"
(cd "$out/collections/ansible_collections/agentguard/hardening" \
  && ANSIBLE_CONFIG="$out/ansible.cfg" ANSIBLE_COLLECTIONS_PATH="$out/collections" ansible-lint --profile production)
antsibull-changelog lint
