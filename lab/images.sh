#!/usr/bin/env bash
# Build the lab's Debian images without a registry:
#   lab/images.sh [bookworm|bullseye|trixie|all]   (default: bookworm)
#   FORCE=1 lab/images.sh bookworm                 (rebuild even if cached)
#
# Each image is a debootstrap --variant=minbase root imported as localhost/agentguard-lab:<suite>.
# It boots systemd with /sbin/init (test hosts) and also runs `sleep infinity` (lab services).
# The packages the role installs are NOT installed: they sit with their dependencies in a local
# apt repository /opt/lab-apt, the only apt source of the image, lists already fetched, so
# `apt-get install iptables-persistent ipset-persistent python3-dnspython` works offline in the lab.
# An image is rebuilt only when its inputs change (this script, the suite, the mirror): their hash
# is stored in the image label org.agentguard.lab.inputs.
set -euo pipefail
SCRIPT=$(readlink -f "${BASH_SOURCE[0]}")
# shellcheck source=lab/env.sh
. "$(dirname "$SCRIPT")/env.sh"

MIRROR=${LAB_MIRROR:-http://deb.debian.org/debian}
SUITES=(bookworm bullseye trixie)
# Installed in the image (bind9-dnsutils: dig; the dnsutils transitional package is gone in trixie).
BASE_PKGS=(python3 python3-apt systemd systemd-sysv dbus iproute2 iputils-ping curl ca-certificates
  netcat-openbsd bind9-dnsutils openssh-server openssh-client sudo procps kmod dnsmasq openssl)
# Shipped in /opt/lab-apt only (with dependencies and recommends): what the role installs,
# plus ulogd2 for NFLOG-based logging tests and systemd-resolved for the Molecule scenario `resolved`
# (a package of its own from bookworm on; bullseye's systemd has it built in, so it is missing there).
# nginx-light and libnginx-mod-stream: the role's TLS gate (egress_tls_gate).
# chrony: the time daemon of the Molecule scenario `host-services` (installed there) and of the lab's
# time server ag-time; apt-utils: apt-ftparchive, which builds the lab mirror ag-mirror's repository
# (both services unpack them with dpkg-deb -x, nothing is installed in the image).
# nftables and prometheus-node-exporter: the Molecule scenario `guard` (Debian's nftables.service with
# its default flush-ruleset configuration, and a real textfile-collector scrape).
REPO_PKGS=(iptables ipset netfilter-persistent iptables-persistent ipset-persistent python3-dnspython ulogd2
  systemd-resolved nginx-light libnginx-mod-stream chrony apt-utils nftables prometheus-node-exporter)
# Also in /opt/lab-apt, bookworm only and WITHOUT recommends (no git, perl, apparmor): the container
# engines of the Molecule scenario `containers` (Docker 20.10; root podman with netavark; rootless
# podman with uidmap and slirp4netns). Never installed in the image.
CONTAINER_SUITES=(bookworm)
CONTAINER_PKGS=(docker.io containerd runc tini podman conmon golang-github-containers-common netavark
  aardvark-dns slirp4netns uidmap)
# Must not be installed in the image, or role tests would prove nothing.
NOT_PREINSTALLED=(iptables ipset netfilter-persistent iptables-persistent ipset-persistent
  python3-dnspython nftables docker.io containerd podman netavark nginx-common libnginx-mod-stream chrony
  prometheus-node-exporter)

log() { printf 'images: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

inputs_hash() { { cat "$SCRIPT"; printf '%s %s\n' "$1" "$MIRROR"; } | sha256sum | cut -c1-16; }

umount_under() {  # unmount everything mounted below $1, deepest first
  local m
  for m in $(findmnt -rn -o TARGET | grep -F "$1/" | sort -r); do umount -l "$m" 2>/dev/null || true; done
}

remove_root() {
  local root=$1
  [ -d "$root" ] || return 0
  umount_under "$root"
  if grep -qF "$root/" <<<"$(findmnt -rn -o TARGET)"; then die "mounts left under $root, not deleting it"; fi
  rm -rf --one-file-system "$root"
}

in_root() { chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C \
  DEBIAN_FRONTEND=noninteractive HOME=/root "$@"; }

build_suite() {
  local suite=$1 tag="$LAB_IMAGE_REPO:$1" want have old_id t0 container_pkgs=""
  if [[ " ${CONTAINER_SUITES[*]} " == *" $suite "* ]]; then container_pkgs="${CONTAINER_PKGS[*]}"; fi
  want=$(inputs_hash "$suite")
  have=$(podman image inspect --format '{{index .Labels "org.agentguard.lab.inputs"}}' "$tag" 2>/dev/null || true)
  if [ "$have" = "$want" ] && [ -z "${FORCE:-}" ]; then
    log "$tag is up to date (inputs $want)"; return 0
  fi
  old_id=$(podman image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
  t0=$(date +%s)
  log "building $tag (inputs $want) from $MIRROR"
  ROOT=$LAB_STATE/build/$suite/root
  local cache=$LAB_STATE/cache/debootstrap-$suite
  remove_root "$ROOT"
  mkdir -p "$ROOT" "$cache"
  trap 'remove_root "$ROOT"' EXIT

  # 1. The base system (debootstrap keeps the downloaded .debs in $cache for the next build).
  timeout 900 debootstrap --variant=minbase --components=main --cache-dir="$cache" \
    --include="$(IFS=,; echo "${BASE_PKGS[*]}")" "$suite" "$ROOT" "$MIRROR" \
    > "$LAB_STATE/build/$suite/debootstrap.log" 2>&1 \
    || { tail -n 30 "$LAB_STATE/build/$suite/debootstrap.log" >&2; die "debootstrap $suite failed"; }
  log "$suite: debootstrap done in $(( $(date +%s) - t0 )) s"

  # 2. The local apt repository with the role's packages (downloaded, not installed).
  mount -t proc proc "$ROOT/proc"
  cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
  printf 'deb %s %s main\n' "$MIRROR" "$suite" > "$ROOT/etc/apt/sources.list"
  rm -f "$ROOT"/etc/apt/sources.list.d/*
  cat > "$ROOT/etc/apt/apt.conf.d/90agentguard-lab" <<'EOF'
Acquire::Languages "none";
APT::Sandbox::User "root";
EOF
  # shellcheck disable=SC2016  # the script below runs in the chroot, its variables expand there
  timeout 300 chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C \
    DEBIAN_FRONTEND=noninteractive HOME=/root REPO_PKGS="${REPO_PKGS[*]}" CONTAINER_PKGS="$container_pkgs" SUITE="$suite" \
    /bin/bash -euo pipefail -c '
    apt-get -qq update
    avail=() missing=()
    for p in $REPO_PKGS; do
      if apt-cache show --no-all-versions "$p" >/dev/null 2>&1; then avail+=("$p"); else missing+=("$p"); fi
    done
    mkdir -p /opt/lab-apt/partial
    apt-get -qq install -y --download-only -o Dir::Cache::archives=/opt/lab-apt "${avail[@]}" >/dev/null
    if [ -n "$CONTAINER_PKGS" ]; then
      apt-get -qq install -y --download-only --no-install-recommends -o Dir::Cache::archives=/opt/lab-apt \
        $CONTAINER_PKGS >/dev/null
      avail+=($CONTAINER_PKGS)
    fi
    rm -rf /opt/lab-apt/partial /opt/lab-apt/lock
    cd /opt/lab-apt
    for deb in *.deb; do
      dpkg-deb -f "$deb"
      printf "Filename: ./%s\nSize: %s\nSHA256: %s\n\n" "$deb" "$(stat -c %s "$deb")" \
        "$(sha256sum "$deb" | cut -d" " -f1)"
    done > Packages
    gzip -9nk Packages
    {
      printf "Origin: agentguard-lab\nLabel: agentguard-lab\nSuite: %s\nCodename: %s\n" "$SUITE" "$SUITE"
      printf "Date: %s\nArchitectures: amd64 all\nDescription: agentguard lab offline repository\nSHA256:\n" \
        "$(LC_ALL=C date -u -R)"
      for f in Packages Packages.gz; do
        printf " %s %s %s\n" "$(sha256sum "$f" | cut -d" " -f1)" "$(stat -c %s "$f")" "$f"
      done
    } > Release
    printf "%s\n" "${avail[@]}" > PACKAGES-REQUESTED
    printf "%s\n" "${missing[@]+"${missing[@]}"}" > PACKAGES-MISSING
    '
  local missing
  missing=$(tr '\n' ' ' < "$ROOT/opt/lab-apt/PACKAGES-MISSING")
  [ -z "${missing// /}" ] || log "$suite: NOTE: not in $suite, so not in /opt/lab-apt: $missing"

  # 3. Point apt ONLY at the local repository and fetch its lists (works offline from now on).
  printf 'deb [trusted=yes] file:/opt/lab-apt ./\n' > "$ROOT/etc/apt/sources.list"
  rm -rf "$ROOT"/var/lib/apt/lists/*
  in_root apt-get -qq update
  in_root apt-get -qq clean

  # 4. Test host tweaks.
  in_root useradd --create-home --uid 1000 --user-group --shell /bin/bash agent
  # dnsmasq is there for the lab resolvers; it must not run on the test hosts.
  in_root systemctl disable dnsmasq.service >/dev/null 2>&1 || true
  # Nothing may touch dpkg behind a test's back; no timers in a test host.
  in_root systemctl mask apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer \
    e2scrub_all.timer fstrim.timer e2scrub_reap.service >/dev/null 2>&1 || true
  # Per-container ssh host keys and machine id, generated at boot.
  rm -f "$ROOT"/etc/ssh/ssh_host_*
  mkdir -p "$ROOT/etc/systemd/system/ssh.service.d"
  printf '[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n' \
    > "$ROOT/etc/systemd/system/ssh.service.d/agentguard-lab.conf"
  : > "$ROOT/etc/machine-id"
  rm -f "$ROOT/var/lib/dbus/machine-id"
  # Smaller image: no docs, man pages or translations (also for packages installed later).
  printf 'path-exclude /usr/share/doc/*\npath-include /usr/share/doc/*/copyright\npath-exclude /usr/share/man/*\npath-exclude /usr/share/info/*\npath-exclude /usr/share/locale/*\n' \
    > "$ROOT/etc/dpkg/dpkg.cfg.d/90agentguard-lab-nodoc"
  find "$ROOT/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
  rm -rf "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/* "$ROOT"/usr/share/locale/* \
    "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/log/*.log "$ROOT"/var/cache/debconf/*-old "$ROOT"/etc/resolv.conf
  printf 'agentguard-lab\n' > "$ROOT/etc/hostname"

  # 5. Checks before import.
  local p
  for p in "${NOT_PREINSTALLED[@]}"; do
    # shellcheck disable=SC2016  # ${Status} is dpkg-query's format, not a shell variable
    if [ "$(in_root dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = 'install ok installed' ]; then
      die "$suite: $p is pre-installed (pulled in by the base packages)"
    fi
  done
  in_root test -x /sbin/init || die "$suite: no /sbin/init"
  in_root python3 -c 'import apt' || die "$suite: python3-apt missing"
  in_root apt-get -qq -s install iptables-persistent python3-dnspython ipset >/dev/null \
    || die "$suite: the local repository cannot satisfy the role's packages"
  if [ -n "$container_pkgs" ]; then
    # shellcheck disable=SC2086  # a list of package names
    in_root apt-get -qq -s install --no-install-recommends $container_pkgs >/dev/null \
      || die "$suite: the local repository cannot satisfy the container engines ($container_pkgs)"
  fi
  umount "$ROOT/proc"

  # 6. Import.
  tar -C "$ROOT" --numeric-owner -cf - . | podman import -q \
    --change 'CMD ["/bin/sleep", "infinity"]' \
    --change "LABEL org.agentguard.lab.inputs=$want" \
    --change "LABEL org.agentguard.lab.suite=$suite" \
    --message "agentguard lab $suite ($want)" - "$tag" >/dev/null
  remove_root "$ROOT"
  trap - EXIT
  if [ -n "$old_id" ] && [ "$old_id" != "$(podman image inspect --format '{{.Id}}' "$tag")" ]; then
    podman image rm "$old_id" >/dev/null 2>&1 || log "old image ${old_id:0:12} still in use, kept"
  fi
  log "$tag built in $(( $(date +%s) - t0 )) s, $(podman image inspect --format '{{.Size}}' "$tag" \
    | awk '{printf "%.0f MB", $1/1e6}')"
}

[ "$(id -u)" = 0 ] || die "run as root"
command -v debootstrap >/dev/null || die "debootstrap missing: run scripts/bootstrap.sh"
mkdir -p "$LAB_STATE"
what=${1:-bookworm}
case "$what" in
  all) for s in "${SUITES[@]}"; do build_suite "$s"; done ;;
  bookworm|bullseye|trixie) build_suite "$what" ;;
  *) echo "usage: $0 [bookworm|bullseye|trixie|all]" >&2; exit 2 ;;
esac
