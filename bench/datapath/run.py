#!/usr/bin/env python
"""Datapath cost: new TCP connections per second through the egress ruleset.

A client namespace connects (and resets) in a loop to a server in a peer namespace, for
SECONDS per measurement, with: no firewall; connection tracking only (one
"-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT" rule, what any stateful host pays);
our ruleset (a destination of N addresses is matched with one hash:net ipset, as
egress_rules renders it); and the same allowlist as a linear chain of N rules. The server's address is the LAST of the N, the worst case for the
linear chain. Configurations alternate within each repetition; medians are reported.

Usage (root): .venv/bin/python bench/datapath/run.py [--sizes 10,1000,10000] [--reps 5] [--seconds 5]
"""
import argparse
import contextlib
import ipaddress
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, ".cache", "collections"))

from ansible_collections.agentguard.hardening.plugins.module_utils import _policy, _render  # noqa: E402

CLIENT, SERVER = "agdp-client", "agdp-server"
# Above every allowlist() address: the server is the last of the N however the render orders them
# (it sorts them by address since commit e157200).
C4, S4, PORT = "198.18.250.2", "198.18.250.1", 443
TOOL = os.path.join(ROOT, ".cache", "tcpconn")


def sh(*argv, **kw):
    return subprocess.run(argv, check=kw.pop("check", True), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, **kw)


def build_tool():
    src = os.path.join(HERE, "tcpconn.c")
    if not os.path.exists(TOOL) or os.path.getmtime(TOOL) < os.path.getmtime(src):
        os.makedirs(os.path.dirname(TOOL), exist_ok=True)
        sh("gcc", "-O2", "-Wall", "-o", TOOL, src)


def loadavg():
    """/proc/loadavg's 1, 5 and 15 minute averages, as text."""
    with open("/proc/loadavg") as handle:
        return " ".join(handle.read().split()[:3])


def add_namespaces(*names):
    """Fresh namespaces (an old one of the same name is removed first), loopback up."""
    for ns in names:
        sh("ip", "netns", "del", ns, check=False)
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")


def start_server(ns, address, port=PORT):
    """The tcpconn server in `ns`, once it listens."""
    server = subprocess.Popen(["ip", "netns", "exec", ns, TOOL, "server", address, str(port)],
                              stdout=subprocess.PIPE, universal_newlines=True)
    assert server.stdout.readline().strip() == "ready"
    return server


def stop_server(server):
    if server is not None and server.poll() is None:
        server.terminate()
        server.wait(timeout=10)


def lab_up():
    add_namespaces(CLIENT, SERVER)
    sh("ip", "link", "add", "agdp0", "netns", CLIENT, "type", "veth", "peer", "name", "agdp1", "netns", SERVER)
    sh("ip", "-n", CLIENT, "addr", "add", C4 + "/24", "dev", "agdp0")
    sh("ip", "-n", SERVER, "addr", "add", S4 + "/24", "dev", "agdp1")
    sh("ip", "-n", CLIENT, "link", "set", "agdp0", "up")
    sh("ip", "-n", SERVER, "link", "set", "agdp1", "up")
    return start_server(SERVER, S4)


def lab_down(server):
    stop_server(server)
    for ns in (CLIENT, SERVER):
        sh("ip", "netns", "del", ns, check=False)


def allowlist(n, last=S4):
    """N addresses, the server's (`last`) last."""
    base = ipaddress.ip_address("198.18.64.0")
    assert ipaddress.ip_address(last) > base + n, "%s would not be the last of %d addresses once sorted" % (last, n)
    return [str(base + i + 1) for i in range(n - 1)] + [last]


@contextlib.contextmanager
def linear_render(linear=True):
    """Render every destination as one rule per address (no ipset), however many it has."""
    threshold = _render.SET_THRESHOLD
    if linear:
        _render.SET_THRESHOLD = 10 ** 9
    try:
        yield
    finally:
        _render.SET_THRESHOLD = threshold


def payloads(n, linear):
    policy = _policy.build_policy({"allow": [{"name": "api", "host": "api.bench"}], "dns_servers": ["198.18.32.53"],
                                   "families": ["ipv4"]}, lambda name: 0)
    resolved = {"api": {"ipv4": allowlist(n), "ipv6": []}}
    with linear_render(linear):
        sets = _render.desired_sets(policy, resolved)
        state = _render.desired_state(policy, resolved, "ipv4", sets)
    return _render.render_persistent(state, {}), _render.render_sets_persistent(sets)


def configure(config, n):
    sh("ip", "netns", "exec", CLIENT, "iptables", "-F")
    sh("ip", "netns", "exec", CLIENT, "iptables", "-X")
    sh("ip", "netns", "exec", CLIENT, "iptables", "-P", "OUTPUT", "ACCEPT")
    sh("ip", "netns", "exec", CLIENT, "ipset", "destroy", check=False)
    if config == "none":
        return 0
    if config == "conntrack":
        sh("ip", "netns", "exec", CLIENT, "iptables", "-A", "OUTPUT", "-m", "conntrack", "--ctstate",
           "RELATED,ESTABLISHED", "-j", "ACCEPT")
        return 1
    rules, sets = payloads(n, linear=config == "linear")
    if sets:
        sh("ip", "netns", "exec", CLIENT, "ipset", "restore", input=sets)
    sh("ip", "netns", "exec", CLIENT, "iptables-restore", input=rules)
    return sum(1 for line in rules.splitlines() if line.startswith("-A "))


def client(seconds, ns=CLIENT, address=S4):
    """Run the tcpconn client in `ns` for `seconds`: (connections, CPU seconds the client used).

    "ip netns exec" execs the tool in its own process, so the children's CPU time gained around
    this call (nothing else runs meanwhile) is the tool's, with the softirq work its packets cause in
    its own context (forwarding, conntrack, the rules) when the kernel runs that work there."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = sh("ip", "netns", "exec", ns, TOOL, "client", address, str(PORT), str(seconds),
             timeout=seconds + 60).stdout.split()  # a dropped SYN blocks connect() for minutes
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    count, errors = int(out[0]), int(out[1])
    assert errors == 0, "connections failed: %s" % out
    return count, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def rate(seconds, ns=CLIENT, address=S4):
    """New connections per second from `ns` to the tcpconn server at `address`."""
    return client(seconds, ns, address)[0] / float(seconds)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--sizes", default="10,1000,10000")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "datapath.json"))
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/datapath needs root (network namespaces)")
    build_tool()
    server = lab_up()
    results = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "seconds": args.seconds, "sizes": {}}
    try:
        for n in [int(s) for s in args.sizes.split(",")]:
            runs = {"none": [], "conntrack": [], "ours": [], "linear": []}
            rules = {}
            for rep in range(args.reps):
                order = ["none", "conntrack", "ours", "linear"]
                order = order[rep % 4:] + order[:rep % 4]  # rotate so no configuration always runs first
                for config in order:
                    rules[config] = configure(config, n)
                    runs[config].append(rate(args.seconds))
                    print("N=%d rep %d %-6s %8.0f conn/s" % (n, rep + 1, config, runs[config][-1]), file=sys.stderr, flush=True)
            med = dict((c, statistics.median(v)) for c, v in runs.items())
            results["sizes"][str(n)] = {"median_conn_per_s": med, "runs": runs, "rules": rules,
                                        "ours_vs_none": round(med["ours"] / med["none"], 3),
                                        "ours_vs_conntrack": round(med["ours"] / med["conntrack"], 3),
                                        "linear_vs_none": round(med["linear"] / med["none"], 3)}
            os.makedirs(os.path.dirname(args.out), exist_ok=True)
            with open(args.out, "w") as handle:
                json.dump(results, handle, indent=1)
    finally:
        lab_down(server)
    print("| N allowlisted | no firewall | conntrack only | egress_rules (ipset) | linear chain | ours / none "
          "| ours / conntrack only | linear / none |")
    print("|---|---|---|---|---|---|---|---|")
    for n, data in results["sizes"].items():
        m = data["median_conn_per_s"]
        print("| %s | %.0f | %.0f | %.0f | %.0f | %.1f %% | %.1f %% | %.1f %% |" % (
            n, m["none"], m["conntrack"], m["ours"], m["linear"], 100 * data["ours_vs_none"],
            100 * data["ours_vs_conntrack"], 100 * data["linear_vs_none"]))


if __name__ == "__main__":
    main()
