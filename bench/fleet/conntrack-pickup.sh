#!/usr/bin/env bash
# Why the fleet run hung in "Apply the egress policy": a TCP connection that was opened *before*
# connection tracking was active in a network namespace (no rule needed it yet) is picked up by
# conntrack from its first packet seen afterwards, and that packet has ctstate NEW, not
# ESTABLISHED. When the host sends first (the module's result on the SSH session that carried it),
# the packet hits "-P OUTPUT DROP" behind "--ctstate RELATED,ESTABLISHED -j ACCEPT", is dropped, the
# entry is never confirmed, and every retransmission is NEW again: the session is dead until
# something else restores the rules. If the peer sends first, its packet creates the entry in the
# INPUT direction and the host's replies are ESTABLISHED.
#
# Three cases, each in two fresh namespaces of our own (198.18.200.0/30, nothing leaves them):
#   host-first       connection open, rules applied, the server ("host") sends   -> expect: stalls
#   peer-first       connection open, rules applied, the client ("controller") sends one byte first
#   tracked-before   a conntrack rule existed before the connection was opened, then host sends
# Usage (root): bash bench/fleet/conntrack-pickup.sh
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces)" >&2; exit 1; }
H=agct-host C=agct-ctl
cleanup() { ip netns del "$H" 2>/dev/null || true; ip netns del "$C" 2>/dev/null || true; }
trap cleanup EXIT

setup() {
  cleanup
  ip netns add "$H"; ip netns add "$C"
  ip link add agct0 netns "$H" type veth peer name agct1 netns "$C"
  ip -n "$H" addr add 198.18.200.1/30 dev agct0; ip -n "$H" link set agct0 up; ip -n "$H" link set lo up
  ip -n "$C" addr add 198.18.200.2/30 dev agct1; ip -n "$C" link set agct1 up; ip -n "$C" link set lo up
}

# The module's shape of ruleset, reduced to what matters here.
rules() {
  ip netns exec "$H" iptables -w -A OUTPUT -o lo -j ACCEPT
  ip netns exec "$H" iptables -w -A OUTPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
  ip netns exec "$H" iptables -w -A OUTPUT -j LOG --log-prefix "[agct-DENIED] "
  ip netns exec "$H" iptables -w -P OUTPUT DROP
}

for case in host-first peer-first tracked-before; do
  setup
  if [ "$case" = tracked-before ]; then
    ip netns exec "$H" iptables -w -A INPUT -m conntrack --ctstate INVALID -j DROP  # any conntrack rule
  fi
  rm -f /tmp/agct-go
  ip netns exec "$H" timeout 20 python3 -c '
import os, socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("198.18.200.1", 2222)); s.listen(1); c, _ = s.accept(); c.recv(100)
for _ in range(100):
    if os.path.exists("/tmp/agct-go"): break
    time.sleep(0.1)
if sys.argv[1] == "peer-first": c.recv(1)
c.sendall(b"result\n"); time.sleep(6)' "$case" &
  server=$!
  sleep 0.5
  ip netns exec "$C" timeout 20 python3 -c '
import os, socket, sys, time
c = socket.create_connection(("198.18.200.1", 2222)); c.sendall(b"payload\n")
for _ in range(100):                 # wait until the host has applied its rules
    if os.path.exists("/tmp/agct-rules"): break
    time.sleep(0.1)
open("/tmp/agct-go", "w").close()
if sys.argv[1] == "peer-first":
    time.sleep(0.3); c.sendall(b"x")
c.settimeout(5)
try:
    r = "reply %r" % c.recv(100)
except socket.timeout:
    r = "STALLED: no reply in 5 s"
print("%-15s %s" % (sys.argv[1], r))' "$case" &
  client=$!
  sleep 0.5
  rules
  touch /tmp/agct-rules
  wait "$client" || true
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  rm -f /tmp/agct-go /tmp/agct-rules
  printf '%-15s host packets dropped by OUTPUT policy: %s\n' "" \
    "$(ip netns exec "$H" iptables -w -L OUTPUT -n -v -x | awk 'NR==1{print $5}')"
done
