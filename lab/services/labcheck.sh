#!/usr/bin/env bash
# Probe every lab service over IPv4 and IPv6 from an UNFIREWALLED host (ag-sibling):
#   podman exec ag-sibling /lab/services/labcheck.sh [-q]
# Proves that each service, allowed or forbidden, is up, so that a "blocked" result on a test
# host cannot come from a server that is down. Exit status: number of failed probes (0 = all up).
# Every probe has its own timeout; the whole run takes a few seconds.
set -u
CA=/lab/ca.crt
QUIET=${1:-}
fails=0
ok() { [ "$QUIET" = -q ] || printf 'ok    %s\n' "$*"; }
bad() { printf 'FAIL  %s\n' "$*"; fails=$((fails + 1)); }

# expect DESCRIPTION WANT CMD...: CMD's output must contain WANT.
expect() {
  local desc=$1 want=$2 out
  shift 2
  if declare -F "$1" >/dev/null; then  # the helper functions below bound themselves
    out=$("$@" 2>&1 < /dev/null) || true
  else
    out=$(timeout 8 "$@" 2>&1 < /dev/null) || true
  fi
  case "$out" in
    *"$want"*) ok "$desc" ;;
    *) bad "$desc: wanted '$want', got '$(printf '%s' "$out" | tr '\n' ' ' | cut -c1-160)'" ;;
  esac
}
# shellcheck disable=SC2317  # udp_echo and tls_probe are called through expect
udp_echo() {  # udp_echo ADDR PORT: one datagram out, the echo back (2 s timeout)
  timeout 5 python3 -c '
import socket, sys
addr = socket.getaddrinfo(sys.argv[1], int(sys.argv[2]), type=socket.SOCK_DGRAM)[0]
s = socket.socket(addr[0], socket.SOCK_DGRAM)
s.settimeout(2)
s.sendto(b"labcheck", addr[4])
print(s.recv(2048).decode(errors="replace"))' "$1" "$2" 2>&1
}
# shellcheck disable=SC2317
ntp_query() {  # ntp_query ADDR: one NTP client request (version 4, mode 3) to udp/123, the server's mode and stratum
  timeout 5 python3 -c '
import socket, sys
addr = socket.getaddrinfo(sys.argv[1], 123, type=socket.SOCK_DGRAM)[0]
s = socket.socket(addr[0], socket.SOCK_DGRAM)
s.settimeout(2)
s.sendto(b"\x23" + bytes(47), addr[4])
reply = s.recv(2048)
print("ntp mode %d stratum %d" % (reply[0] & 7, reply[1]))' "$1" 2>&1
}
# shellcheck disable=SC2317
tls_probe() {  # tls_probe HOST:PORT NAME: TLS handshake verified against the lab CA
  timeout 6 openssl s_client -brief -connect "$1" -servername "$2" -verify_hostname "$2" \
    -CAfile "$CA" -verify_return_error < /dev/null 2>&1
}

for fam in 4 6; do
  if [ "$fam" = 4 ]; then
    R=198.18.0.53 A=198.18.0.10 X=198.18.0.11 F=198.18.0.66 AAAA=A
  else
    R=fd00:a9e:1::53 A=fd00:a9e:1::10 X=fd00:a9e:1::11 F=fd00:a9e:1::66 AAAA=AAAA
  fi
  b() { case "$1" in *:*) echo "[$1]" ;; *) echo "$1" ;; esac; }  # bracket IPv6 for host:port

  # ag-resolver: trusted, authoritative, no upstream; queried over IPv$fam.
  expect "v$fam resolver $R udp/53 api.openclaw.security $AAAA" "$A" dig +short +time=2 +tries=1 @"$R" api.openclaw.security "$AAAA"
  expect "v$fam resolver $R tcp/53 openexchangerates.org $AAAA" "$X" dig +short +tcp +time=2 +tries=1 @"$R" openexchangerates.org "$AAAA"
  expect "v$fam resolver $R udp/53 exfil.attacker.lab $AAAA" "$F" dig +short +time=2 +tries=1 @"$R" exfil.attacker.lab "$AAAA"
  expect "v$fam resolver $R unknown name is NXDOMAIN" "status: NXDOMAIN" dig +time=2 +tries=1 @"$R" not-in-the-lab.example A
  expect "v$fam resolver $R tls/853 (DoT port up)" "CONNECTION ESTABLISHED" tls_probe "$(b "$R"):853" dns.agentguard.lab

  # ag-api: the allowed inference API (names resolved by the lab resolver).
  expect "v$fam api https://api.openclaw.security" "agentguard-lab api ok" curl -sS -"$fam" --max-time 5 --cacert "$CA" https://api.openclaw.security/
  expect "v$fam api http://api.openclaw.security (tcp/80)" "agentguard-lab api ok" curl -sS -"$fam" --max-time 5 http://api.openclaw.security/
  expect "v$fam api $A udp/443 (QUIC port up)" "agentguard-lab api udp/443 echo" udp_echo "$A" 443
  # A co-tenant of the API's address (as on a CDN): another name, same server, same addresses.
  expect "v$fam api co-tenant https://cotenant.cdn.lab" "agentguard-lab api ok" curl -sS -"$fam" --max-time 5 --cacert "$CA" https://cotenant.cdn.lab/

  # ag-rates: the optional currency API.
  expect "v$fam rates https://openexchangerates.org" "agentguard-lab rates ok" curl -sS -"$fam" --max-time 5 --cacert "$CA" https://openexchangerates.org/

  # ag-time and ag-mirror: the time server and the Debian mirror of the host's own services.
  T=198.18.0.12; [ "$fam" = 4 ] || T=fd00:a9e:1::12
  expect "v$fam time $T udp/123 (NTP, chronyd)" "ntp mode 4 stratum 8" ntp_query "$T"
  expect "v$fam mirror http://deb.agentguard.lab/debian (tcp/80)" "Origin: agentguard-lab-mirror" \
    curl -sS -"$fam" --max-time 5 http://deb.agentguard.lab/debian/dists/bookworm/Release

  # ag-forbidden: everything here must stay unreachable from a firewalled agent.
  expect "v$fam forbidden https://exfil.attacker.lab" "agentguard-lab forbidden ok" curl -sS -"$fam" --max-time 5 --cacert "$CA" https://exfil.attacker.lab/
  expect "v$fam forbidden http://exfil.attacker.lab (tcp/80)" "agentguard-lab forbidden ok" curl -sS -"$fam" --max-time 5 http://exfil.attacker.lab/
  for port in 22 25; do
    expect "v$fam forbidden $F tcp/$port" "agentguard-lab forbidden tcp/$port" nc -N -w 3 "$F" "$port"
  done
  expect "v$fam forbidden $F tls/853" "CONNECTION ESTABLISHED" tls_probe "$(b "$F"):853" exfil.attacker.lab
  expect "v$fam forbidden $F udp/443" "agentguard-lab forbidden udp/443 echo" udp_echo "$F" 443
  expect "v$fam forbidden rogue resolver $F udp/53" "$F" dig +short +time=2 +tries=1 @"$F" anything.example.com "$AAAA"
  expect "v$fam forbidden rogue resolver $F tcp/53" "$F" dig +short +tcp +time=2 +tries=1 @"$F" api.openclaw.security "$AAAA"
  expect "v$fam forbidden $F icmp echo" " 0% packet loss" ping -"$fam" -c 1 -W 2 "$F"
done

[ "$QUIET" = -q ] || echo "labcheck: $fails failed"
exit "$fails"
