#!/usr/bin/env bash
# The agentguard lab: an offline podman network with a trusted resolver, the allowed APIs,
# a forbidden host, an unfirewalled sibling and the test hosts (agents). See lab/README.md.
#
#   lab/lab.sh up                 network + services, then probe every service over IPv4 and IPv6
#   lab/lab.sh down               remove the lab containers (and anything else on the lab network)
#   lab/lab.sh status             what runs, and the probes once
#   lab/lab.sh check              the probes (from ag-sibling) once
#   lab/lab.sh agent [NAME] [SUITE]   start a systemd test host (default ag-agent, bookworm)
#   lab/lab.sh agent-rm NAME      remove a test host
#   lab/lab.sh selftest [SUITE]   throwaway agent: offline apt install, iptables nft/legacy,
#                                 ip6tables, ipset, a LOG line in dmesg, persistence over a restart
#   lab/lab.sh dns-reload         re-read lab/.state/dns/trusted.hosts and dns/hosts.d/* (a test's own names)
#   lab/lab.sh logs NAME          the service's connection and DNS query logs
# Every wait is bounded. All traffic stays on the --internal network agentguard-lab.
set -euo pipefail
SCRIPT=$(readlink -f "${BASH_SOURCE[0]}")
# shellcheck source=lab/env.sh
. "$(dirname "$SCRIPT")/env.sh"

LABEL=org.agentguard.lab
# The host's own services of the Molecule scenario host-services: an NTP server and a Debian mirror.
LAB_TIME4=198.18.0.12 LAB_TIME6=fd00:a9e:1::12 LAB_MIRROR4=198.18.0.13 LAB_MIRROR6=fd00:a9e:1::13
NF_SYSCTL=net.netfilter.nf_log_all_netns
# Each systemd lab host takes several inotify instances: past about 25 hosts at the default 128, a new
# host's systemd stays "initializing" (bench/fleet at M = 50).
INOTIFY_SYSCTL=fs.inotify.max_user_instances INOTIFY_MIN=1024

log() { printf 'lab: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
exists() { podman container exists "$1"; }
running() { [ "$(podman inspect --format '{{.State.Running}}' "$1" 2>/dev/null)" = true ]; }

# Podman keeps its "running" records under /run/libpod, and /run is not a tmpfs on these machines: on a
# machine restored from a snapshot, or after the processes of a session were killed, podman still
# reports containers as running whose processes are gone, and every exec fails with "cannot exec in a
# stopped container". Remove such containers so that they are created again.
reap_stale() {
  local name pid mnt host_mnt i
  host_mnt=$(stat -L -c %i /proc/self/ns/mnt)
  for name in $(podman ps --format '{{.Names}}' 2>/dev/null); do
    # A failed inspect (the container just went away, or podman's lock timed out under load) proves
    # nothing: only a PID that podman reports and that is gone or in the host's namespace does.
    pid=$(podman inspect --format '{{.State.Pid}}' "$name" 2>/dev/null) || continue
    # alive = the PID lives in a mount namespace of its own (a reused PID would not; a zombie has none)
    mnt=""
    [ "${pid:-0}" -le 0 ] || mnt=$(stat -L -c %i "/proc/$pid/ns/mnt" 2>/dev/null || true)
    if [ -n "$mnt" ] && [ "$mnt" != "$host_mnt" ]; then continue; fi
    log "$name: podman says running but its process is gone; removing the stale container"
    # the first removal of a stale container can stop half-way ("Stopping"): bounded retries
    for i in 1 2 3; do
      exists "$name" || break
      podman rm -f -t 0 "$name" >/dev/null 2>&1 || sleep "$i"
    done
    ! exists "$name" || die "$name: cannot remove the stale container (podman rm -f $name)"
  done
}

# ---------------------------------------------------------------- PKI (lab CA + server certs)
PKI=$LAB_STATE/pki
leaf() {  # leaf DIR SAN: key + certificate signed by the lab CA, remade when SAN, CA or expiry say so
  local dir=$PKI/$1 san=$2
  mkdir -p "$dir"
  if [ -s "$dir/tls.crt" ] && [ "$(cat "$dir/san" 2>/dev/null)" = "$san" ] \
      && openssl verify -CAfile "$PKI/ca.crt" "$dir/tls.crt" >/dev/null 2>&1 \
      && openssl x509 -checkend 604800 -noout -in "$dir/tls.crt" >/dev/null; then
    return 0
  fi
  local cn=${san#DNS:}; cn=${cn%%,*}
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/O=agentguard lab/CN=$cn" \
    -keyout "$dir/tls.key" -out "$dir/tls.csr" 2>/dev/null
  printf '%s\n' 'basicConstraints=critical,CA:FALSE' 'keyUsage=critical,digitalSignature,keyEncipherment' \
    'extendedKeyUsage=serverAuth' "subjectAltName=$san" 'subjectKeyIdentifier=hash' \
    'authorityKeyIdentifier=keyid' > "$dir/ext.cnf"
  openssl x509 -req -in "$dir/tls.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -days 825 \
    -set_serial "0x$(openssl rand -hex 16)" -extfile "$dir/ext.cnf" -out "$dir/tls.crt" 2>/dev/null
  chmod 600 "$dir/tls.key"
  rm -f "$dir/tls.csr"
  printf '%s' "$san" > "$dir/san"
  log "certificate for $cn issued"
}
ensure_pki() {
  mkdir -p "$PKI"
  chmod 700 "$PKI"
  if [ ! -s "$PKI/ca.key" ] || ! openssl x509 -checkend 2592000 -noout -in "$PKI/ca.crt" >/dev/null 2>&1; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
      -subj "/O=agentguard lab/CN=agentguard lab CA" -keyout "$PKI/ca.key" -out "$PKI/ca.crt" \
      -addext 'basicConstraints=critical,CA:TRUE' -addext 'keyUsage=critical,keyCertSign,cRLSign' \
      -addext 'subjectKeyIdentifier=hash' 2>/dev/null
    chmod 600 "$PKI/ca.key"
    log "lab CA created: $LAB_CA"
  fi
  cmp -s "$PKI/ca.crt" "$LAB_CA" 2>/dev/null || cp "$PKI/ca.crt" "$LAB_CA"
  # cotenant.cdn.lab: a second name on the API's addresses, as another customer of a CDN (the TLS gate's tests).
  leaf api "DNS:api.openclaw.security,DNS:cotenant.cdn.lab,IP:$LAB_API4,IP:$LAB_API6"
  leaf rates "DNS:openexchangerates.org,DNS:*.openexchangerates.org,IP:$LAB_RATES4,IP:$LAB_RATES6"
  leaf forbidden "DNS:exfil.attacker.lab,DNS:*.attacker.lab,IP:$LAB_FORBIDDEN4,IP:$LAB_FORBIDDEN6"
  leaf resolver "DNS:dns.agentguard.lab,IP:$LAB_RESOLVER4,IP:$LAB_RESOLVER6"
  # A key for SSH into the test hosts (root), e.g. for a rollback test over the lab network.
  mkdir -p "$LAB_STATE/ssh"
  [ -s "$LAB_STATE/ssh/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -C agentguard-lab -f "$LAB_STATE/ssh/id_ed25519"
}

# ---------------------------------------------------------------- DNS data of the trusted resolver
DNS_HOSTS=$LAB_STATE/dns/trusted.hosts
ensure_dns_hosts() {
  mkdir -p "$LAB_STATE/dns/hosts.d"
  local want
  want=$(printf '%s\n' "# Trusted lab resolver data (written by lab/lab.sh up; lab.sh dns-reload re-reads it)." \
    "$LAB_API4 api.openclaw.security" "$LAB_API6 api.openclaw.security" \
    "$LAB_API4 cotenant.cdn.lab" "$LAB_API6 cotenant.cdn.lab" \
    "$LAB_RATES4 openexchangerates.org" "$LAB_RATES6 openexchangerates.org" \
    "$LAB_FORBIDDEN4 exfil.attacker.lab" "$LAB_FORBIDDEN6 exfil.attacker.lab" \
    "$LAB_RESOLVER4 dns.agentguard.lab" "$LAB_RESOLVER6 dns.agentguard.lab" \
    "$LAB_TIME4 time.agentguard.lab" "$LAB_TIME6 time.agentguard.lab" \
    "$LAB_MIRROR4 deb.agentguard.lab" "$LAB_MIRROR6 deb.agentguard.lab")
  if [ "$(cat "$DNS_HOSTS" 2>/dev/null)" != "$want" ]; then
    printf '%s\n' "$want" > "$DNS_HOSTS"
    if running ag-resolver; then dns_reload; fi
  fi
}
dns_reload() {
  podman exec ag-resolver sh -c 'kill -HUP $(pidof dnsmasq)'
  log "ag-resolver re-read $DNS_HOSTS"
}

# ---------------------------------------------------------------- network
ensure_network() {
  if podman network exists "$LAB_NET"; then
    local got want
    got=$(podman network inspect --format '{{.Internal}} {{.DNSEnabled}} {{range .Subnets}}{{.Subnet}} {{.LeaseRange.StartIP}} {{end}}' "$LAB_NET" 2>/dev/null) || got="no lease ranges"
    want="true false $LAB_NET4 ${LAB_NET4_RANGE%.*/*}.129 $LAB_NET6 ${LAB_NET6_RANGE%0/*}1 "
    [ "$got" = "$want" ] || die "network $LAB_NET exists but is not the lab's ('$got', want '$want'): run lab/lab.sh down"
    return 0
  fi
  # --internal: no NAT and no route to the outside. --disable-dns: no aardvark resolver on the gateway,
  # the lab resolver is the only one. Dynamic addresses come from the upper half of the /24 only.
  podman network create --internal --disable-dns --label "$LABEL=network" \
    --subnet "$LAB_NET4" --gateway "$LAB_GW4" --ip-range "$LAB_NET4_RANGE" \
    --ipv6 --subnet "$LAB_NET6" --gateway "$LAB_GW6" --ip-range "$LAB_NET6_RANGE" "$LAB_NET" >/dev/null
  log "network $LAB_NET created (internal, $LAB_NET4 dynamic $LAB_NET4_RANGE, $LAB_NET6 dynamic $LAB_NET6_RANGE)"
}

# The lab must not talk to anything but itself. --internal gives the containers no default route and
# netavark sets net.ipv4.conf.<bridge>.forwarding=0, but IPv6 has no per-interface forwarding switch:
# with the host's net.ipv6.conf.all.forwarding=1 (set by other podman networks or namespaces), a test
# host with NET_ADMIN that adds a route via the bridge gets IPv6 routed out (measured). So the host
# drops everything routed into or out of the lab bridge and every new connection from the lab to the
# host itself (ICMP stays, for IPv6 neighbour discovery).
# Runtime iptables rules in chains of our own; lab.sh down removes them.
# Not "AGENTGUARD-*": that prefix belongs to the egress_rules module, which owns every such chain.
GUARD=AGLAB-GUARD
OLD_GUARD=AGENTGUARD-LAB  # the name before; removed where an older lab left it
guard() {  # guard add|del
  local br ipt icmp
  if [ "$1" = add ]; then
    br=$(podman network inspect --format '{{.NetworkInterface}}' "$LAB_NET")
    printf '%s\n' "$br" > "$LAB_STATE/guard.bridge"
  else
    br=$(cat "$LAB_STATE/guard.bridge" 2>/dev/null) || return 0
  fi
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null || die "$ipt missing on the host: run scripts/bootstrap.sh"
    icmp=icmp; [ "$ipt" = iptables ] || icmp=ipv6-icmp
    local i g
    for g in "$OLD_GUARD" "$GUARD"; do
      for i in 1 2 3 4 5; do  # remove our jumps (bounded)
        "$ipt" -w -D FORWARD -j "$g-FWD" 2>/dev/null || "$ipt" -w -D INPUT -i "$br" -j "$g-IN" 2>/dev/null || break
      done
      "$ipt" -w -F "$g-FWD" 2>/dev/null && "$ipt" -w -X "$g-FWD"
      "$ipt" -w -F "$g-IN" 2>/dev/null && "$ipt" -w -X "$g-IN"
    done
    [ "$1" = add ] || continue
    "$ipt" -w -N "$GUARD-FWD"
    "$ipt" -w -A "$GUARD-FWD" -i "$br" -o "$br" -j RETURN -m comment --comment "agentguard lab: inside the lab"
    "$ipt" -w -A "$GUARD-FWD" -i "$br" -j DROP -m comment --comment "agentguard lab: nothing routed out"
    "$ipt" -w -A "$GUARD-FWD" -o "$br" -j DROP -m comment --comment "agentguard lab: nothing routed in"
    "$ipt" -w -N "$GUARD-IN"
    "$ipt" -w -A "$GUARD-IN" -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN
    "$ipt" -w -A "$GUARD-IN" -p "$icmp" -j RETURN
    "$ipt" -w -A "$GUARD-IN" -j DROP -m comment --comment "agentguard lab: no new connections to the host"
    "$ipt" -w -I FORWARD 1 -j "$GUARD-FWD"
    "$ipt" -w -I INPUT 1 -i "$br" -j "$GUARD-IN"
  done
  if [ "$1" = add ]; then
    log "HOST guard: iptables/ip6tables chains $GUARD-FWD/-IN drop traffic routed out of $br and new connections to the host"
  else
    rm -f "$LAB_STATE/guard.bridge"; log "HOST guard chains removed"
  fi
}
set_host_sysctl() {
  local cur
  cur=$(sysctl -n "$NF_SYSCTL" 2>/dev/null) || { log "NOTE: no $NF_SYSCTL on this kernel"; return 0; }
  if [ "$cur" != 1 ]; then
    [ -e "$LAB_STATE/host-$NF_SYSCTL.orig" ] || printf '%s\n' "$cur" > "$LAB_STATE/host-$NF_SYSCTL.orig"
    sysctl -qw "$NF_SYSCTL=1"
  fi
  log "HOST sysctl $NF_SYSCTL=1 (runtime only, nothing under /etc): iptables LOG lines from the lab hosts' network namespaces reach the kernel log (dmesg)"
  raise_inotify
}
raise_inotify() {  # from `up` and from `agent` (a host started by itself needs it too)
  local cur
  cur=$(sysctl -n "$INOTIFY_SYSCTL" 2>/dev/null) || { log "NOTE: no $INOTIFY_SYSCTL on this kernel"; return 0; }
  [ "$cur" -lt "$INOTIFY_MIN" ] || return 0
  [ -e "$LAB_STATE/host-$INOTIFY_SYSCTL.orig" ] || printf '%s\n' "$cur" > "$LAB_STATE/host-$INOTIFY_SYSCTL.orig"
  sysctl -qw "$INOTIFY_SYSCTL=$INOTIFY_MIN"
  log "HOST sysctl $INOTIFY_SYSCTL=$INOTIFY_MIN (was $cur; runtime only, nothing under /etc): each systemd lab host takes several inotify instances"
}
note_host_sysctl() {  # not reset on down: other namespaces on this host may rely on them as well
  local key orig
  for key in "$NF_SYSCTL" "$INOTIFY_SYSCTL"; do
    orig=$LAB_STATE/host-$key.orig
    [ -s "$orig" ] || continue
    log "HOST sysctl $key left at $(sysctl -n "$key") (was $(cat "$orig") before the lab): sysctl -w $key=$(cat "$orig") to reset"
  done
}

# Fixed MAC addresses: `podman restart` otherwise gives a container a new MAC, and its peers keep the
# old one in their neighbour caches (connections time out after a "reboot" of a test host).
mac_for() {  # mac_for IP4 | mac_for NAME (no fixed address)
  case "$1" in
    198.18.0.*) printf '0a:9e:00:00:00:%02x\n' "${1##*.}" ;;
    *) printf '0a:9e:01:%s\n' "$(printf '%s' "$1" | sha256sum | sed 's/\(..\)\(..\)\(..\).*/\1:\2:\3/')" ;;
  esac
}

image_id() { podman image inspect --format '{{.Id}}' "$LAB_IMAGE_REPO:$1" 2>/dev/null; }
ensure_image() {
  "$LAB_DIR/images.sh" "$1"
  image_id "$1" >/dev/null || die "no image $LAB_IMAGE_REPO:$1"
}

# ---------------------------------------------------------------- services
# run_service NAME IP4 IP6 ROLE [labserver flags]: (re)create the container when its configuration changed.
run_service() {
  local name=$1 ip4=$2 ip6=$3 role=$4
  shift 4
  local tls=() mounts=() hash have
  mkdir -p "$LAB_STATE/logs/$name"
  # Fresh logs per start (wait_ready looks for this start's "ready"); the previous ones become *.1.
  rotate_log() {
    local f
    for f in "$LAB_STATE/logs/$name"/labserver.log "$LAB_STATE/logs/$name"/dnsmasq.log; do
      [ ! -s "$f" ] || mv -f "$f" "$f.1"
    done
  }
  mounts=(-v "$LAB_DIR/services:/lab/services:ro" -v "$LAB_CA:/lab/ca.crt:ro" -v "$LAB_STATE/logs/$name:/var/log/lab")
  [ "$role" != resolver ] || mounts+=(-v "$LAB_STATE/dns:/lab/dns:ro")
  if [ -d "$PKI/$role" ]; then
    mounts+=(-v "$PKI/$role/tls.crt:/lab/tls/tls.crt:ro" -v "$PKI/$role/tls.key:/lab/tls/tls.key:ro")
    tls=(--cert /lab/tls/tls.crt --key /lab/tls/tls.key)
  fi
  hash=$({ cat "$SCRIPT" "$LAB_DIR/env.sh" "$LAB_DIR"/services/*; image_id bookworm; cat "$PKI/ca.crt";
           [ -z "${tls[*]}" ] || cat "$PKI/$role/tls.crt"; echo "$*"; } | sha256sum | cut -c1-16)
  have=$(podman inspect --format "{{index .Config.Labels \"$LABEL.config\"}}" "$name" 2>/dev/null || true)
  if [ "$have" = "$hash" ]; then
    running "$name" || { rotate_log; podman start "$name" >/dev/null; log "$name started"; }
    return 0
  fi
  if exists "$name"; then podman rm -f -t 5 "$name" >/dev/null; fi
  rotate_log
  local cmd=(/lab/services/entrypoint.sh "$role" "${tls[@]}" "$@") caps=()
  [ "$role" != sibling ] || cmd=(/bin/sleep infinity)
  # A service with an entry point of its own: lab/services/ROLE.sh (time, mirror).
  [ ! -f "$LAB_DIR/services/$role.sh" ] || cmd=("/lab/services/$role.sh" "$@")
  # ag-time logs the NTP datagrams that reach it from a packet socket (lab/services/ntplog.py).
  [ "$role" != time ] || caps=(--cap-add NET_RAW)
  podman run -d --name "$name" --hostname "$name" --init \
    --label "$LABEL=service" --label "$LABEL.config=$hash" "${caps[@]}" \
    --network "$LAB_NET" --ip "$ip4" --ip6 "$ip6" --mac-address "$(mac_for "$ip4")" \
    --dns "$LAB_RESOLVER4" --dns "$LAB_RESOLVER6" --dns-search . \
    "${mounts[@]}" "$LAB_IMAGE_REPO:bookworm" "${cmd[@]}" >/dev/null
  log "$name created ($ip4, $ip6)"
  if [ "$role" = sibling ]; then
    podman exec "$name" sh -c 'cp /lab/ca.crt /usr/local/share/ca-certificates/agentguard-lab-ca.crt && update-ca-certificates >/dev/null 2>&1'
  fi
}

wait_ready() {  # the labserver of each service logged "ready" (bounded)
  local name i
  for name in ag-resolver ag-api ag-rates ag-forbidden ag-time ag-mirror; do
    for i in $(seq 1 50); do
      grep -q ' ready$' "$LAB_STATE/logs/$name/labserver.log" 2>/dev/null && running "$name" && break
      running "$name" || { podman logs --tail 20 "$name" >&2; die "$name is not running"; }
      [ "$i" -lt 50 ] || die "$name not ready after 10 s"
      sleep 0.2
    done
  done
}

check() {  # check [TRIES]: the probes from ag-sibling, retried (bounded) while addresses settle
  local tries=${1:-1} i out
  running ag-sibling || die "ag-sibling is not running: lab/lab.sh up"
  for i in $(seq 1 "$tries"); do
    if out=$(timeout 120 podman exec ag-sibling /lab/services/labcheck.sh); then
      printf '%s\n' "$out"
      return 0
    fi
    [ "$i" -lt "$tries" ] && sleep 1
  done
  printf '%s\n' "$out"
  die "some lab services are DOWN (see FAIL lines above)"
}

print_addresses() {
  cat <<EOF
Lab network $LAB_NET (internal, no NAT): $LAB_NET4 (dynamic: $LAB_NET4_RANGE), $LAB_NET6 (dynamic: $LAB_NET6_RANGE)
  host (bridge gateway)  $LAB_GW4  $LAB_GW6
  ag-resolver   $LAB_RESOLVER4   $LAB_RESOLVER6   trusted DNS udp+tcp/53 (authoritative), tls/853
  ag-api        $LAB_API4   $LAB_API6   api.openclaw.security (and co-tenant cotenant.cdn.lab): https 443, http 80, udp/443 echo
  ag-rates      $LAB_RATES4   $LAB_RATES6   openexchangerates.org: https 443
  ag-time       $LAB_TIME4   $LAB_TIME6   time.agentguard.lab: NTP udp/123 (chronyd -x, local stratum 8)
  ag-mirror     $LAB_MIRROR4   $LAB_MIRROR6   deb.agentguard.lab: Debian mirror http 80 (/debian bookworm main)
  ag-forbidden  $LAB_FORBIDDEN4   $LAB_FORBIDDEN6   exfil.attacker.lab: tls 443/853, tcp 80/25/22, udp/443, rogue DNS 53, icmp
  ag-sibling    $LAB_SIBLING4   $LAB_SIBLING6   unfirewalled control host (curl, dig, nc, openssl)
  ag-agent      $LAB_AGENT4   $LAB_AGENT6   demo test host (lab/lab.sh agent)
Lab CA: $LAB_CA   SSH key for the test hosts: $LAB_STATE/ssh/id_ed25519
Logs: $LAB_STATE/logs/<service>/{labserver,dnsmasq}.log
EOF
}

up() {
  local t0=$SECONDS
  mkdir -p "$LAB_STATE"
  ensure_image bookworm
  ensure_pki
  ensure_dns_hosts
  ensure_network
  guard add
  set_host_sysctl
  run_service ag-resolver "$LAB_RESOLVER4" "$LAB_RESOLVER6" resolver --listen tls:853:banner
  run_service ag-api "$LAB_API4" "$LAB_API6" api --listen tls:443 --listen tcp:80 --listen udp:443
  run_service ag-rates "$LAB_RATES4" "$LAB_RATES6" rates --listen tls:443
  run_service ag-forbidden "$LAB_FORBIDDEN4" "$LAB_FORBIDDEN6" forbidden --listen tls:443 --listen tcp:80 \
    --listen tcp:25:banner --listen tcp:22:banner --listen tls:853:banner --listen udp:443
  run_service ag-time "$LAB_TIME4" "$LAB_TIME6" time
  run_service ag-mirror "$LAB_MIRROR4" "$LAB_MIRROR6" mirror
  run_service ag-sibling "$LAB_SIBLING4" "$LAB_SIBLING6" sibling
  wait_ready
  local out
  out=$(check 15) || { printf '%s\n' "$out"; exit 1; }
  log "all $(grep -c '^ok' <<<"$out") probes passed from ag-sibling (IPv4 and IPv6)"
  print_addresses
  log "up in $((SECONDS - t0)) s"
}

down() {
  local c others
  for c in $(podman ps -a --filter "label=$LABEL" --format '{{.Names}}'); do
    podman rm -f -t 5 "$c" >/dev/null && log "$c removed"
  done
  if podman network exists "$LAB_NET"; then
    others=$(podman ps -a --filter "network=$LAB_NET" --format '{{.Names}}' | tr '\n' ' ')
    [ -z "${others// /}" ] || log "also removing containers attached to $LAB_NET: $others"
    podman network rm -f -t 5 "$LAB_NET" >/dev/null
    log "network $LAB_NET removed"
  fi
  guard del
  note_host_sysctl
  log "down (images and lab/.state kept; lab/images.sh rebuilds images, rm -rf lab/.state resets the CA)"
}

status() {
  if ! podman network exists "$LAB_NET"; then echo "lab is down (no network $LAB_NET)"; return 3; fi
  echo "network $LAB_NET: $(podman network inspect --format 'internal={{.Internal}} {{range .Subnets}}{{.Subnet}} {{end}}' "$LAB_NET")"
  podman ps -a --filter "network=$LAB_NET" \
    --format '{{printf "%-14s" .Names}} {{printf "%-28s" .Status}} {{.Image}}'
  echo "host $NF_SYSCTL=$(sysctl -n "$NF_SYSCTL" 2>/dev/null || echo n/a)," \
    "$INOTIFY_SYSCTL=$(sysctl -n "$INOTIFY_SYSCTL" 2>/dev/null || echo n/a)," \
    "guard $(iptables -w -C FORWARD -j "$GUARD-FWD" 2>/dev/null && ip6tables -w -C FORWARD -j "$GUARD-FWD" 2>/dev/null && echo on || echo OFF)"
  check 1 | grep -v '^ok'
}

# ---------------------------------------------------------------- test hosts
# agent NAME SUITE [IP4 IP6]: systemd as PID 1, NET_ADMIN, lab CA trusted, lab resolver only.
agent() {
  local name=${1:-ag-agent} suite=${2:-bookworm} ip4=${3:-} ip6=${4:-} t0=$SECONDS hash have
  if [ "$name" = ag-agent ]; then ip4=${ip4:-$LAB_AGENT4} ip6=${ip6:-$LAB_AGENT6}; fi
  podman network exists "$LAB_NET" || die "the lab is down: lab/lab.sh up"
  [ -s "$LAB_CA" ] || die "no lab CA: lab/lab.sh up"
  raise_inotify
  ensure_image "$suite"
  hash=$(printf '%s %s %s %s\n' "$(image_id "$suite")" "$(sha256sum < "$LAB_CA")" "$ip4" "$ip6" | sha256sum | cut -c1-16)
  have=$(podman inspect --format "{{index .Config.Labels \"$LABEL.config\"}}" "$name" 2>/dev/null || true)
  if [ "$have" != "$hash" ]; then
    if exists "$name"; then podman rm -f -t 10 "$name" >/dev/null; log "$name: old container removed"; fi
    # Without fixed addresses: pick a pair ourselves, 198.18.0.N and fd00:a9e:1::1:N (N = 130..254, from the
    # name, next one if taken). Podman's IPAM keeps allocating IPv6 below the network's --ip-range when the
    # network was once created without one (its allocation state outlives `podman network rm`).
    local n tries=0 out
    n=$(( 130 + 0x$(printf '%s' "$name" | sha256sum | cut -c1-4) % 125 ))
    while :; do
      local a4=${ip4:-198.18.0.$n} a6=${ip6:-fd00:a9e:1::1:$n}
      # /sbin/init: podman's systemd mode (tmpfs /run, /tmp, cgroup mounts, SIGRTMIN+3 to stop).
      # SYSLOG: dmesg (kernel LOG lines) inside the host. NET_ADMIN: iptables, ip6tables, ipset.
      if out=$(podman run -d --name "$name" --hostname "$name" \
          --label "$LABEL=agent" --label "$LABEL.config=$hash" --label "$LABEL.suite=$suite" \
          --network "$LAB_NET" --ip "$a4" --ip6 "$a6" --mac-address "$(mac_for "$a4")" \
          --dns "$LAB_RESOLVER4" --dns "$LAB_RESOLVER6" --dns-search . \
          --cap-add NET_ADMIN --cap-add SYSLOG \
          "$LAB_IMAGE_REPO:$suite" /sbin/init 2>&1); then
        break
      fi
      podman rm -f -t 0 "$name" >/dev/null 2>&1 || true
      tries=$((tries + 1))
      if [ -n "$ip4" ] || [ "$tries" -ge 10 ] || ! grep -q 'already allocated' <<<"$out"; then
        die "$name: podman run failed: $out"
      fi
      n=$(( n >= 254 ? 130 : n + 1 ))
    done
    log "$name: created from $LAB_IMAGE_REPO:$suite"
  elif ! running "$name"; then
    podman start "$name" >/dev/null
  fi
  local state
  state=$(wait_systemd "$name" 90) \
    || { podman logs --tail 30 "$name" >&2 || true; die "$name: systemd did not come up in 90 s (state '$state')"; }
  [ "$state" = running ] || log "$name: systemd is degraded: $(podman exec "$name" systemctl --failed --no-legend --plain | awk '{print $1}' | tr '\n' ' ')"
  podman cp "$LAB_CA" "$name:/usr/local/share/ca-certificates/agentguard-lab-ca.crt"
  podman exec "$name" update-ca-certificates >/dev/null 2>&1
  podman exec -i "$name" sh -c 'install -d -m 700 /root/.ssh && cat > /root/.ssh/authorized_keys && chmod 600 /root/.ssh/authorized_keys' \
    < "$LAB_STATE/ssh/id_ed25519.pub"
  log "$name ready in $((SECONDS - t0)) s: systemd $state, $(podman inspect --format '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{.GlobalIPv6Address}}{{end}}' "$name"), resolver $LAB_RESOLVER4 / $LAB_RESOLVER6, lab CA trusted"
}

wait_systemd() {  # wait_systemd NAME SECONDS: print the state once it is running or degraded
  local deadline=$((SECONDS + $2)) state=
  while [ "$SECONDS" -lt "$deadline" ]; do
    # Right after start the bus may not be up yet: is-system-running then fails at once.
    state=$(timeout 10 podman exec "$1" systemctl is-system-running 2>/dev/null) || true
    case "$state" in running|degraded) echo "$state"; return 0 ;; esac
    sleep 0.5
  done
  echo "$state"
  return 1
}

agent_rm() {
  [ -n "${1:-}" ] || die "usage: lab.sh agent-rm NAME"
  [ "$(podman inspect --format "{{index .Config.Labels \"$LABEL\"}}" "$1" 2>/dev/null)" = agent ] \
    || die "$1 is not a lab test host"
  podman rm -f -t 10 "$1" >/dev/null && log "$1 removed"
}

selftest() {  # a throwaway test host proves what the role's tests rely on
  local suite=${1:-bookworm} name=ag-selftest-${1:-bookworm} t0=$SECONDS
  agent "$name" "$suite"
  podman exec -i "$name" bash -euo pipefail < "$LAB_DIR/services/selftest.sh" \
    || { podman rm -f -t 5 "$name" >/dev/null; die "selftest on $suite FAILED"; }
  log "selftest: restart (systemd reboot) keeps the saved rules"
  podman restart -t 20 "$name" >/dev/null
  wait_systemd "$name" 90 >/dev/null || die "selftest on $suite: systemd did not come back after restart"
  local out
  out=$(podman exec "$name" sh -c 'iptables-save; ip6tables-save; ipset list -n' 2>&1)
  for want in 'agentguard-selftest' 'agentguard_selftest'; do
    grep -q -- "$want" <<<"$out" || { podman rm -f -t 5 "$name" >/dev/null; die "selftest on $suite: '$want' lost over restart"; }
  done
  podman rm -f -t 10 "$name" >/dev/null
  log "selftest on $suite passed in $((SECONDS - t0)) s"
}

[ "$(id -u)" = 0 ] || die "run as root"
case "${1:-}" in
  up|status|check|agent|selftest) reap_stale ;;
esac
case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  check) check 1 ;;
  agent) shift; agent "$@" ;;
  agent-rm) shift; agent_rm "$@" ;;
  selftest) shift; selftest "$@" ;;
  dns-reload) dns_reload ;;
  logs) [ -n "${2:-}" ] || die "usage: lab.sh logs NAME"; tail -n "${3:-50}" "$LAB_STATE/logs/$2"/*.log ;;
  addresses) print_addresses ;;
  *) sed -n '2,17p' "$SCRIPT" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
