# shellcheck shell=bash
# Run inside a fresh lab test host by `lab/lab.sh selftest` (bash -euo pipefail, as root).
# Proves what the role's tests rely on: the offline apt repository, the lab resolver and CA,
# iptables-nft AND iptables-legacy, ip6tables, ipset, owner matches, LOG lines in dmesg, and it
# leaves saved rules behind for the persistence check over a restart.
export DEBIAN_FRONTEND=noninteractive LC_ALL=C
say() { printf 'selftest: %s\n' "$*"; }
fail() { printf 'selftest: FAIL %s\n' "$*"; exit 1; }

pkgs=(iptables-persistent python3-dnspython ipset)
if apt-cache show ipset-persistent >/dev/null 2>&1; then pkgs+=(ipset-persistent); else say "NOTE: no ipset-persistent here"; fi
timeout 60 apt-get -qq update
timeout 300 apt-get -qq install -y "${pkgs[@]}" >/tmp/selftest-apt.log 2>&1 || { tail /tmp/selftest-apt.log; fail "offline apt-get install"; }
say "offline install of ${pkgs[*]} ok"

python3 - <<'PY'
import dns.resolver
r = dns.resolver.Resolver()
for rtype, want in (("A", "198.18.0.10"), ("AAAA", "fd00:a9e:1::10")):
    got = [a.to_text() for a in r.resolve("api.openclaw.security", rtype, lifetime=5)]
    assert got == [want], (rtype, got)
print("selftest: dnspython via /etc/resolv.conf (%s) ok" % ", ".join(r.nameservers))
PY
for fam in 4 6; do
  body=$(curl -sS -$fam --max-time 5 https://api.openclaw.security/) || fail "curl -$fam api"
  [ "$body" = "agentguard-lab api ok" ] || fail "api body: $body"
done
say "https://api.openclaw.security over IPv4 and IPv6 with the lab CA in the trust store ok"

blocked() {  # blocked FAM URL [user]: the connection must fail
  local fam=$1 url=$2 user=${3:-root}
  if runuser -u "$user" -- curl -s -"$fam" --max-time 3 -o /dev/null "$url"; then return 1; fi
  return 0
}
for mode in nft legacy; do
  update-alternatives --quiet --set iptables "/usr/sbin/iptables-$mode"
  update-alternatives --quiet --set ip6tables "/usr/sbin/ip6tables-$mode"
  iptables -V | grep -q "$( [ $mode = nft ] && echo nf_tables || echo legacy)" || fail "iptables -V: $(iptables -V)"
  for fam in 4 6; do
    ipt=iptables dst=198.18.0.66
    [ $fam = 4 ] || ipt=ip6tables dst=fd00:a9e:1::66
    $ipt -w -N AGSELFTEST
    $ipt -w -A AGSELFTEST -d "$dst" -p tcp --dport 443 -j LOG --log-prefix "[AGSELFTEST-$mode-v$fam] "
    $ipt -w -A AGSELFTEST -d "$dst" -p tcp --dport 443 -j REJECT
    $ipt -w -A AGSELFTEST -m owner --uid-owner agent -p tcp --dport 80 -j REJECT
    $ipt -w -I OUTPUT -j AGSELFTEST
    blocked $fam https://exfil.attacker.lab/ || fail "$mode v$fam: forbidden host not blocked"
    curl -sS -$fam --max-time 5 -o /dev/null http://api.openclaw.security/ || fail "$mode v$fam: root http blocked"
    blocked $fam http://api.openclaw.security/ agent || fail "$mode v$fam: owner match did not block user agent"
    found=
    for _ in $(seq 1 20); do
      # (not `dmesg | grep -q`: under pipefail an early grep exit fails the pipeline with SIGPIPE)
      grep -q "AGSELFTEST-$mode-v$fam" <<<"$(dmesg 2>/dev/null)" && { found=1; break; }
      sleep 0.2
    done
    [ -n "$found" ] || fail "$mode v$fam: no LOG line in dmesg (host sysctl net.netfilter.nf_log_all_netns=1? CAP_SYSLOG?)"
    $ipt -w -D OUTPUT -j AGSELFTEST; $ipt -w -F AGSELFTEST; $ipt -w -X AGSELFTEST
  done
  say "iptables-$mode: ip4+ip6 REJECT, owner match, LOG in dmesg ok"
done
update-alternatives --quiet --set iptables /usr/sbin/iptables-nft
update-alternatives --quiet --set ip6tables /usr/sbin/ip6tables-nft

ipset create agentguard_selftest hash:ip family inet
ipset add agentguard_selftest 198.18.0.10
iptables -w -A OUTPUT -m set --match-set agentguard_selftest dst -m comment --comment agentguard-selftest -j ACCEPT
ip6tables -w -A OUTPUT -d fd00:a9e:1::10 -m comment --comment agentguard-selftest -j ACCEPT
netfilter-persistent save >/dev/null 2>&1 || fail "netfilter-persistent save"
systemctl is-enabled netfilter-persistent >/dev/null || fail "netfilter-persistent not enabled"
say "ipset + netfilter-persistent save ok"
