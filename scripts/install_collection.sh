#!/usr/bin/env bash
# Build the collection tarball from the working tree and install it, as a Galaxy user gets it (only what
# galaxy.yml's build_ignore lets through), into DEST/ansible_collections/agentguard/hardening. DEST is
# emptied first; the tarball is left in DEST/build and its path printed.
# Usage: scripts/install_collection.sh DEST   (used by build.sh, sanity.sh and lint.sh)
set -euo pipefail
. "$(dirname "$0")/env.sh"
dest=${1:?usage: install_collection.sh DEST}
rm -rf "$dest"
mkdir -p "$dest/build"
ansible-galaxy collection build --force --output-path "$dest/build" "$ROOT" >/dev/null
tarball=$(ls "$dest"/build/agentguard-hardening-*.tar.gz)
ansible-galaxy collection install --force --no-deps -p "$dest" "$tarball" >/dev/null 2>&1
[ -f "$dest/ansible_collections/agentguard/hardening/MANIFEST.json" ] || { echo "install_collection: not installed" >&2; exit 1; }
echo "$tarball"
