#!/usr/bin/env bash
# Install everything the demo and the tests need on a fresh Debian 12 machine (run as root):
# Debian packages, a virtualenv in .venv, and the collections Molecule's podman driver uses.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

APT_PACKAGES=(iptables nftables ipset iproute2 procps kmod util-linux debootstrap podman netavark aardvark-dns runc catatonit shellcheck
  uidmap slirp4netns fuse-overlayfs openssl curl socat dnsmasq-base busybox dhcpcd-base python3-venv python3-dnspython
  unzip git make chromium nginx-light libnginx-mod-stream prometheus prometheus-node-exporter)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# ansible-core 2.20+ needs Python >= 3.12 on the controller: prefer the newest one pyenv has.
pick_python() {
  local cand
  for cand in "${AGENTGUARD_PYTHON:-}" \
      $(printf '%s\n' "$(pyenv root 2>/dev/null || echo /root/.pyenv)"/versions/3.1[2-9]*/bin/python3 | sort -V -r) \
      python3.13 python3.12 python3; do
    [ -n "$cand" ] || continue
    if command -v "$cand" >/dev/null 2>&1 || [ -x "$cand" ]; then echo "$cand"; return; fi
  done
}
VENV=${VENV:-$ROOT/.venv}
if [ ! -x "$VENV/bin/python" ]; then
  PY=$(pick_python)
  echo "bootstrap: creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.requirements.sha256"
want=$(sha256sum requirements-dev.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -r requirements-dev.txt
  echo "$want" > "$stamp"
fi

# No Galaxy server is reachable: take the collections we need from PyPI's `ansible` package.
COLL=$ROOT/.cache/collections
if [ ! -d "$COLL/ansible_collections/containers/podman" ]; then
  tmp=$(mktemp -d)
  "$VENV/bin/pip" download -q --no-deps -d "$tmp" "ansible==13.*"
  mkdir -p "$COLL"
  unzip -q "$tmp"/ansible-*.whl 'ansible_collections/containers/podman/*' \
    'ansible_collections/ansible/posix/*' 'ansible_collections/community/general/*' -d "$COLL"
  rm -rf "$tmp"
fi
# Make this checkout importable as agentguard.hardening for playbooks, Molecule and ansible-test.
mkdir -p "$COLL/ansible_collections/agentguard"
ln -sfn "$ROOT" "$COLL/ansible_collections/agentguard/hardening"
version=$("$VENV/bin/ansible" --version)
echo "bootstrap: ok (${version%%$'\n'*})"
