#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Change netfilter the way another tool would and measure, on the test host, how long it stays open.

Run by side_effect.yml on the host (ansible.builtin.script):  tamper.py CASE FORBIDDEN4 FORBIDDEN6
Prints one JSON object:
  case, command, rc        the change made
  opened                   whether any forbidden probe connected after the change (the change
                           opened a way out; a change that cannot open one, e.g. the forward path's
                           jump on a host without containers, is measured by the rules alone)
  restored_after           seconds from the end of the change until our part of the rules (the
                           AGENTGUARD lines, the built-in chains' policies and jumps, as iptables-save
                           prints them without counters) was again what it was before the change
  blocked_after            seconds from the end of the change until the first probe round in which
                           both forbidden probes (IPv4, IPv6) were refused, with none connecting after
  reached_after_block      forbidden probes that connected after blocked_after (must be 0)
Every loop is bounded (WINDOW seconds); probes go to the lab's forbidden server only.
"""
import json
import socket
import subprocess
import sys
import time

WINDOW = 10.0   # how long the guard may take before we give up (the goal is 2 s)
AFTER = 3.0     # how long we keep probing once both are blocked
STEP = 0.02
TIMEOUT = 0.25
CASES = {
    # Debian's default /etc/nftables.conf starts with `flush ruleset`: every table, ours included.
    "nftables-restart": ["systemctl", "restart", "nftables.service"],
    "iptables-flush": ["iptables", "-w", "-F"],
    "ip6tables-policy-accept": ["ip6tables", "-w", "-P", "OUTPUT", "ACCEPT"],
    "mangle-jump-deleted": ["iptables", "-w", "-t", "mangle", "-D", "FORWARD", "-j", "AGENTGUARD-FORWARD"],
}


def ours():
    """Our part of both families' filter and mangle tables, as the kernel prints it."""
    lines = []
    for save in ("iptables-save", "ip6tables-save"):
        for table in ("filter", "mangle"):
            out = subprocess.run([save, "-t", table], stdout=subprocess.PIPE, universal_newlines=True,
                                 check=False).stdout
            for line in out.splitlines():
                if line.startswith(":") and line.split()[0][1:] in ("INPUT", "OUTPUT", "FORWARD", "PREROUTING",
                                                                    "POSTROUTING"):
                    lines.append("%s %s %s" % (save, table, " ".join(line.split()[:2])))
                elif "AGENTGUARD" in line or line.startswith(("-A OUTPUT ", "-A FORWARD ")):
                    lines.append("%s %s %s" % (save, table, line))
    return lines


def probe(family, host):
    sock = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    try:
        sock.connect((host, 443))
        return "connected"
    except OSError as exc:
        return "refused" if isinstance(exc, ConnectionRefusedError) else "blocked"
    finally:
        sock.close()


def main():
    case, forbidden4, forbidden6 = sys.argv[1], sys.argv[2], sys.argv[3]
    baseline = ours()
    before = {4: probe(4, forbidden4), 6: probe(6, forbidden6)}
    start = time.monotonic()
    done = subprocess.run(CASES[case], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                          check=False)
    changed = time.monotonic()
    changed_state = ours() != baseline
    opened = False
    restored_after = blocked_after = None
    reached_after_block = 0
    rounds = 0
    while True:
        now = time.monotonic() - changed
        if now > WINDOW or (blocked_after is not None and restored_after is not None and now > blocked_after + AFTER):
            break
        rounds += 1
        got = {4: probe(4, forbidden4), 6: probe(6, forbidden6)}
        if "connected" in got.values():
            opened = True
            if blocked_after is not None:
                reached_after_block += 1
        elif blocked_after is None:
            blocked_after = round(time.monotonic() - changed, 3)
        if restored_after is None and ours() == baseline:
            restored_after = round(time.monotonic() - changed, 3)
        time.sleep(STEP)
    print(json.dumps({
        "case": case, "command": CASES[case], "rc": done.returncode, "output": done.stdout[-500:],
        "command_seconds": round(changed - start, 3), "changed_state": changed_state,
        "blocked_before": before, "opened": opened, "restored_after": restored_after,
        "blocked_after": blocked_after, "reached_after_block": reached_after_block, "rounds": rounds,
        "state_now_equal": ours() == baseline,
    }, sort_keys=True))


if __name__ == "__main__":
    main()
