#!/usr/bin/env python
"""Datapath cost of scope_networks: new TCP connections per second FORWARDED from a container network.

Three namespaces, like a Docker host's default bridge: a "container" namespace whose veth is a port
of the bridge docker0 in a "host" namespace, which routes (ip_forward) and masquerades to an uplink
veth, beyond which a "server" namespace runs the tcpconn server. The tcpconn client in the container
namespace connects (and resets) in a loop, SECONDS per measurement, through the host namespace with:

  conntrack  what any Docker host pays: filter FORWARD policy DROP with Docker's two rules
             ("-o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
             "-i docker0 ! -o docker0 -j ACCEPT") and nat POSTROUTING "-s <bridge net> ! -o docker0
             -j MASQUERADE";
  ours       the same, plus the module's forward path for scope_networks [docker0], scope none, with
             one destination of N addresses (one hash:net ipset, as egress_rules renders it), the
             server's address the last of the N;
  linear     the same allowlist rendered as a linear chain (one rule per address), at --linear-size
             (0: skipped), to show why the set matters;
  with --profile, also "ours-n1" (the module's forward path with N = 1: one "-d" rule, no set) and
  "jump-only" (the mangle FORWARD jump into an empty AGENTGUARD-FORWARD chain), to split the cost.

Each configuration has its own lab (three namespaces, all labs alike but for the host namespace's
rules), built fresh for every repetition, so no configuration inherits another's conntrack entries
or netfilter hooks. Within a repetition all labs are up at once and take turns every SLICE seconds
(ABC CBA ABC ...; the order rotates per repetition) until each had SECONDS: on a shared machine the
load changes by the second, and turns this short put about the same load on every side. A
configuration's rate in a repetition is its connections over its SECONDS; its cost is the client's CPU
time per connection (see client() in run.py), which other tenants disturb much less. After each repetition the
rule counters prove the path was taken: ours' allow rule counted every NEW connection, its DROP none.
Rules and sets come from the module's own code (_policy.build_policy, _plan.make_plan, for an empty
host), applied with the "ipset restore" and "iptables-restore --noflush" the module runs. IPv4 only.

Usage (root): .venv/bin/python bench/datapath/forward.py [--size 10000] [--linear-size 10000] [--reps 5] [--seconds 5] [--slice 1] [--profile]
"""
import argparse
import json
import os
import re
import signal
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from run import (  # noqa: E402  (bench/datapath/run.py: the same tool, helpers and allowlist)
    ROOT, add_namespaces, allowlist, build_tool, client, linear_render, loadavg, rate, sh, start_server, stop_server,
)
from ansible_collections.agentguard.hardening.plugins.module_utils import _plan, _policy, _state  # noqa: E402

BRIDGE, BRIDGE_NET = "docker0", "198.18.240.0/24"
CTR4, GW4 = "198.18.240.2", "198.18.240.1"
UP4, SRV4 = "198.18.241.1", "198.18.241.2"  # above every allowlist() address: last however it is sorted
DNS4 = "198.18.241.53"
# A fresh lab loses its first SYN or so (neighbours, bridge port); a connect() retried after 1 s would
# weigh on the measurement. Warm up until the client reaches this rate, for at most WARMUP_TRIES s.
WARMUP_RATE, WARMUP_TRIES = 100, 5
MAX_LABS = 9

BASE_RULES = """*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -o {bridge} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -i {bridge} ! -o {bridge} -j ACCEPT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A POSTROUTING -s {net} ! -o {bridge} -j MASQUERADE
COMMIT
""".format(bridge=BRIDGE, net=BRIDGE_NET)

JUMP_ONLY = """*mangle
:AGENTGUARD-FORWARD - [0:0]
-I FORWARD 1 -j AGENTGUARD-FORWARD
COMMIT
"""


def forward_payloads(n, linear=False):
    """(iptables-restore --noflush payload, ipset restore payload) the module would apply to an empty
    host for scope_networks [docker0] with one destination of n addresses."""
    policy = _policy.build_policy({"allow": [{"name": "api", "host": "api.bench"}], "dns_servers": [DNS4],
                                   "families": ["ipv4"], "scope": "none", "scope_networks": [BRIDGE]},
                                  lambda name: 0)
    resolved = {"api": {"ipv4": allowlist(n, last=SRV4), "ipv6": []}}
    with linear_render(linear):
        plan = _plan.make_plan(policy, resolved, ["ipv4"], {"ipv4": _state.live_state("")}, {})
    return plan.transactions["ipv4"], plan.sets_update


class Lab(object):
    """One container/host/server trio of namespaces (agfw<index>-ctr, -host, -srv) with one configuration.
    Every lab has the same addresses and interface names; only the host namespace's rules differ."""

    def __init__(self, index, config):
        assert 0 <= index < MAX_LABS
        self.config = config
        self.ctr, self.host, self.srv = ("agfw%d-%s" % (index, role) for role in ("ctr", "host", "srv"))
        self.server = None

    def in_host(self, *argv, **kw):
        return sh("ip", "netns", "exec", self.host, *argv, **kw)

    def up(self, rules, sets):
        """Build the lab with the base rules plus `rules`/`sets` in the host namespace, start the
        server and warm the path up."""
        ctr, host, srv = self.ctr, self.host, self.srv
        add_namespaces(ctr, host, srv)
        sh("ip", "link", "add", "agfw-c0", "netns", ctr, "type", "veth", "peer", "name", "agfw-c1", "netns", host)
        sh("ip", "link", "add", "agfw-u0", "netns", host, "type", "veth", "peer", "name", "agfw-u1", "netns", srv)
        sh("ip", "-n", host, "link", "add", BRIDGE, "type", "bridge")
        sh("ip", "-n", host, "link", "set", "agfw-c1", "master", BRIDGE)
        sh("ip", "-n", ctr, "addr", "add", CTR4 + "/24", "dev", "agfw-c0")
        sh("ip", "-n", host, "addr", "add", GW4 + "/24", "dev", BRIDGE)
        sh("ip", "-n", host, "addr", "add", UP4 + "/24", "dev", "agfw-u0")
        sh("ip", "-n", srv, "addr", "add", SRV4 + "/24", "dev", "agfw-u1")
        for ns, dev in ((ctr, "agfw-c0"), (host, "agfw-c1"), (host, BRIDGE), (host, "agfw-u0"), (srv, "agfw-u1")):
            sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", ctr, "route", "add", "default", "via", GW4)
        self.in_host("sysctl", "-qw", "net.ipv4.ip_forward=1")
        self.in_host("iptables-restore", input=BASE_RULES)
        if sets:
            self.in_host("ipset", "restore", input=sets)
        if rules:
            self.in_host("iptables-restore", "--noflush", "--wait", "10", input=rules)
        self.server = start_server(srv, SRV4)
        for attempt in range(WARMUP_TRIES):
            if self.rate(1.0) >= WARMUP_RATE:
                return
        raise RuntimeError("lab %s does not forward: under %d conn/s after %d s" % (host, WARMUP_RATE, WARMUP_TRIES))

    def rate(self, seconds):
        return rate(seconds, ns=self.ctr, address=SRV4)

    def client(self, seconds):
        """(connections, client CPU seconds) over `seconds`."""
        return client(seconds, ns=self.ctr, address=SRV4)

    def down(self):
        stop_server(self.server)
        self.server = None
        for ns in (self.ctr, self.host, self.srv):
            sh("ip", "netns", "del", ns, check=False)


COUNTER = re.compile(r"^\[(\d+):\d+\] -A (\S+) (.*)$")


def counters(lab):
    """{(chain, spec): packets} of the lab's host namespace's filter and mangle tables."""
    out = {}
    for table in ("filter", "mangle"):
        for line in lab.in_host("iptables-save", "-c", "-t", table).stdout.splitlines():
            match = COUNTER.match(line)
            if match:
                out[(match.group(2), match.group(3))] = int(match.group(1))
    return out


def check_path(lab, connections):
    """Prove the lab's configuration's path was taken (at least `connections` NEW connections were
    forwarded, and with ours each was allowed by the allowlist rule, none dropped); return the counts."""
    config = lab.config
    seen = counters(lab)
    forwarded = seen[("FORWARD", "-i %s ! -o %s -j ACCEPT" % (BRIDGE, BRIDGE))]
    assert forwarded >= connections, "%s: %d forwarded packets for %d connections" % (config, forwarded, connections)
    proof = {"filter_forward_accept": forwarded}
    if config in ("ours", "linear", "ours-n1"):
        allowed = sum(n for (chain, spec), n in seen.items()
                      if chain == "AGENTGUARD-FWD-ALLOW" and '"agentguard: api"' in spec)
        denied = sum(n for (chain, spec), n in seen.items() if chain == "AGENTGUARD-FWD-DENY" and spec == "-j DROP")
        assert allowed >= connections and denied == 0, "%s: allowed %d denied %d for %d connections" % (
            config, allowed, denied, connections)
        proof.update(allowed_new=allowed, dropped=denied)
    return proof


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--size", type=int, default=10000, help="N allowed addresses for ours")
    parser.add_argument("--linear-size", type=int, default=10000, help="N for the linear chain (0: skip it)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0, help="per configuration and repetition")
    parser.add_argument("--slice", type=float, default=1.0, help="the configurations take turns every SLICE s")
    parser.add_argument("--profile", action="store_true", help="also ours-n1 and jump-only")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "datapath-forward.json"))
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/datapath needs root (network namespaces)")
    slices = int(round(args.seconds / args.slice))
    if not 1 <= args.reps <= 100 or not 0 < args.seconds <= 60 or not 1 <= slices <= 600:
        sys.exit("--reps 1..100, --seconds up to 60, at most 600 slices")
    # SIGTERM runs the finally below too, so no lab outlives the script.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit("terminated"))
    build_tool()
    payloads = {"conntrack": (None, None), "ours": forward_payloads(args.size)}
    if args.linear_size:
        payloads["linear"] = forward_payloads(args.linear_size, linear=True)
    if args.profile:
        payloads["ours-n1"] = forward_payloads(1)
        payloads["jump-only"] = (JUMP_ONLY, None)
    configs = list(payloads)
    results = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "loadavg_start": loadavg(),
               "argv": sys.argv[1:], "size": args.size, "linear_size": args.linear_size, "seconds": args.seconds,
               "slice": args.slice,
               "rules": dict((c, sum(1 for line in (r or "").splitlines() if line.startswith(("-A ", "-I "))))
                             for c, (r, s) in payloads.items()),
               "reps": []}
    labs = []
    try:
        for rep in range(args.reps):
            # Every configuration in its own fresh lab, all up at once; they take turns every slice,
            # in an order that rotates per repetition, so the noise of the shared machine lands on
            # each about equally, and no configuration inherits another's conntrack entries or hooks.
            order = configs[rep % len(configs):] + configs[:rep % len(configs)]
            entry = {"rep": rep + 1, "order": order, "started": time.strftime("%H:%M:%S", time.gmtime()),
                     "loadavg": loadavg(), "slices": dict((c, []) for c in order),
                     "cpu_slices": dict((c, []) for c in order), "proof": {}}
            labs = [Lab(i, config) for i, config in enumerate(order)]
            for lab in labs:
                lab.up(*payloads[lab.config])
            for turn in range(slices):
                for lab in (labs if turn % 2 == 0 else labs[::-1]):
                    count, cpu = lab.client(args.slice)
                    entry["slices"][lab.config].append(count / args.slice)
                    entry["cpu_slices"][lab.config].append(cpu)
            entry["rate"] = dict((c, statistics.mean(v)) for c, v in entry["slices"].items())
            # The client's CPU time per connection: what one connection costs, less sensitive than the
            # rate to the CPU time other tenants take (see client() in run.py for what it includes).
            entry["cpu_us_per_conn"] = dict((c, 1e6 * sum(entry["cpu_slices"][c]) / (sum(entry["slices"][c]) * args.slice))
                                            for c in order)
            for lab in labs:
                entry["proof"][lab.config] = check_path(lab, int(sum(entry["slices"][lab.config]) * args.slice))
                lab.down()
            labs = []
            figures = ", ".join("%s %.0f/s %.1f us" % (c, entry["rate"][c], entry["cpu_us_per_conn"][c]) for c in configs)
            print("rep %d: %s" % (rep + 1, figures), file=sys.stderr, flush=True)
            results["reps"].append(entry)
            os.makedirs(os.path.dirname(args.out), exist_ok=True)
            with open(args.out, "w") as handle:
                json.dump(results, handle, indent=1)
    finally:
        for lab in labs:
            lab.down()
    results["loadavg_end"] = loadavg()
    results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with open(args.out, "w") as handle:
        json.dump(results, handle, indent=1)
    print_table(results, configs)


def print_table(results, configs):
    others = [c for c in configs if c != "conntrack"]
    print("started %s (loadavg %s), finished %s (loadavg %s)" % (
        results["started"], results["loadavg_start"], results["finished"], results["loadavg_end"]))
    print("| rep | order | " + " | ".join(configs) + " | " + " | ".join("%s / conntrack" % c for c in others)
          + " | loadavg at rep start |")
    print("|---" * (3 + len(configs) + len(others)) + "|")
    ratios = dict((c, []) for c in others)
    for entry in results["reps"]:
        rate_ = entry["rate"]
        for c in others:
            ratios[c].append(rate_[c] / rate_["conntrack"])
        print("| %d | %s | %s | %s | %s |" % (
            entry["rep"], ", ".join(entry["order"]), " | ".join("%.0f" % rate_[c] for c in configs),
            " | ".join("%.1f %%" % (100 * ratios[c][-1]) for c in others), entry["loadavg"]))
    rates = dict((c, [e["rate"][c] for e in results["reps"]]) for c in configs)
    print("| median | | %s | %s | |" % (
        " | ".join("%.0f" % statistics.median(rates[c]) for c in configs),
        " | ".join("%.1f %%" % (100 * statistics.median(ratios[c])) for c in others)))
    print("| min-max | | %s | %s | |" % (
        " | ".join("%.0f-%.0f" % (min(rates[c]), max(rates[c])) for c in configs),
        " | ".join("%.1f-%.1f %%" % (100 * min(ratios[c]), 100 * max(ratios[c])) for c in others)))

    print()
    print("client CPU per connection (us):")
    print("| rep | " + " | ".join(configs) + " | " + " | ".join("%s - conntrack" % c for c in others) + " |")
    print("|---" * (1 + len(configs) + len(others)) + "|")
    cpu = dict((c, [e["cpu_us_per_conn"][c] for e in results["reps"]]) for c in configs)
    extra = dict((c, [e["cpu_us_per_conn"][c] - e["cpu_us_per_conn"]["conntrack"] for e in results["reps"]]) for c in others)
    for i, entry in enumerate(results["reps"]):
        print("| %d | %s | %s |" % (entry["rep"], " | ".join("%.1f" % cpu[c][i] for c in configs),
                                    " | ".join("%+.1f" % extra[c][i] for c in others)))
    print("| median | %s | %s |" % (" | ".join("%.1f" % statistics.median(cpu[c]) for c in configs),
                                    " | ".join("%+.1f" % statistics.median(extra[c]) for c in others)))
    print("| min-max | %s | %s |" % (" | ".join("%.1f-%.1f" % (min(cpu[c]), max(cpu[c])) for c in configs),
                                     " | ".join("%+.1f..%+.1f" % (min(extra[c]), max(extra[c])) for c in others)))


if __name__ == "__main__":
    main()
