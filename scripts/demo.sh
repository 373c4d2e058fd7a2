#!/usr/bin/env bash
# The main job on the built-in lab: build the lab, start a fresh agent host, harden it with
# playbooks/harden_agent.yml (inventories/lab), then show what the agent can and cannot reach,
# with the kernel's log lines as evidence. Exits non-zero if any check is not as expected.
set -euo pipefail
. "$(dirname "$0")/env.sh"
cd "$ROOT"
# shellcheck source=lab/env.sh
. lab/env.sh
AGENT=ag-agent

bash lab/images.sh bookworm
bash lab/lab.sh up
# A fresh agent host each time, so the run shows a first rollout, not an idempotent re-run.
bash lab/lab.sh agent-rm "$AGENT" >/dev/null 2>&1 || true
bash lab/lab.sh agent "$AGENT" bookworm

echo
echo "=== ansible-playbook -i inventories/lab playbooks/harden_agent.yml"
ansible-playbook -i inventories/lab playbooks/harden_agent.yml

as_agent() { podman exec "$AGENT" runuser -u agent -- "$@"; }
as_root() { podman exec "$AGENT" "$@"; }
# Each denied attempt is sent to a port of its own so its log line can be quoted.
failures=0
line() { printf '  %-8s %s\n' "$1" "$2"; }
expect_ok() {  # expect_ok DESCRIPTION COMMAND...
  local what=$1; shift
  if as_agent "$@" >/dev/null 2>&1; then line ok "$what"; else line FAILED "$what (expected to work)"; failures=$((failures + 1)); fi
}
expect_blocked() {  # expect_blocked DESCRIPTION COMMAND... (as the agent; AS=root to run as root)
  local what=$1; shift
  if "as_${AS:-agent}" timeout 4 "$@" >/dev/null 2>&1; then line OPEN "$what (expected to be blocked)"; failures=$((failures + 1)); else line blocked "$what"; fi
}
expect_tcp_blocked() { expect_blocked "$1" nc -z -w 2 "$2" "$3"; }  # DESCRIPTION HOST PORT

echo
echo "=== what the agent (uid 1000 on $AGENT) can reach now"
expect_ok "HTTPS to api.openclaw.security over IPv4 (lab CA, via the trusted resolver)" \
  curl -4 -sSf --max-time 5 https://api.openclaw.security/
expect_ok "HTTPS to api.openclaw.security over IPv6" curl -6 -sSf --max-time 5 https://api.openclaw.security/
expect_blocked "HTTPS to exfil.attacker.lab by name, IPv4" curl -4 -sS --max-time 3 -k https://exfil.attacker.lab/
expect_blocked "HTTPS to exfil.attacker.lab by name, IPv6" curl -6 -sS --max-time 3 -k https://exfil.attacker.lab/
expect_tcp_blocked "TCP 443 to the forbidden address $LAB_FORBIDDEN4" "$LAB_FORBIDDEN4" 443
expect_tcp_blocked "TCP 443 to the forbidden address $LAB_FORBIDDEN6" "$LAB_FORBIDDEN6" 443
expect_tcp_blocked "plain HTTP (80) to the allowed API, IPv4" "$LAB_API4" 80
expect_tcp_blocked "plain HTTP (80) to the allowed API, IPv6" "$LAB_API6" 80
expect_blocked "UDP 443 (QUIC) to the allowed API" sh -c "echo x | nc -u -w 2 $LAB_API4 443 | grep -q ."
expect_blocked "DNS to the rogue resolver $LAB_FORBIDDEN4 (UDP)" dig +time=2 +tries=1 @"$LAB_FORBIDDEN4" example.org
expect_blocked "DNS to the rogue resolver $LAB_FORBIDDEN6 (TCP)" dig +tcp +time=2 +tries=1 @"$LAB_FORBIDDEN6" example.org
expect_tcp_blocked "DNS-over-TLS (853) to the trusted resolver" "$LAB_RESOLVER4" 853
expect_tcp_blocked "SMTP (25) to the forbidden host" "$LAB_FORBIDDEN4" 25
expect_tcp_blocked "SSH (22) to the forbidden host, IPv6" "$LAB_FORBIDDEN6" 22
# ping needs CAP_NET_RAW, which the agent user lacks anyway: root shows the firewall blocks it.
AS=root expect_blocked "ICMP echo to the forbidden host (as root: host scope covers every user)" ping -c 1 -W 2 "$LAB_FORBIDDEN4"

echo
# The kernel writes IPv6 addresses in full (fd00:0a9e:0001:0000:...), not as the lab names them.
AGENT6_LOGGED=$(python3 -c 'import ipaddress, sys; print(ipaddress.ip_address(sys.argv[1]).exploded)' "$LAB_AGENT6")
echo "=== evidence: the kernel's log of denied attempts from $AGENT (last 3 per family)"
denied=$(dmesg | grep -F '[EGRESS-DENIED] ' || true)
for family in 4 6; do
  if [ "$family" = 4 ]; then src=$LAB_AGENT4; else src=$AGENT6_LOGGED; fi
  printf '%s\n' "$denied" | grep -F "SRC=$src " | tail -n 3 | sed 's/^/  /' || true
  lines=$(printf '%s\n' "$denied" | grep -F "SRC=$src " | grep -c " UID=1000 " || true)
  if [ "${lines:-0}" -eq 0 ]; then
    line FAILED "no IPv$family [EGRESS-DENIED] line with UID=1000 from $AGENT in the kernel log"
    failures=$((failures + 1))
  else
    line ok "IPv$family: $lines denied line(s) from uid 1000 in the kernel log"
  fi
done

echo
if [ "$failures" -eq 0 ]; then
  echo "demo: every check as expected. Stop the lab with: make lab-down"
else
  echo "demo: $failures check(s) NOT as expected" >&2
  exit 1
fi
