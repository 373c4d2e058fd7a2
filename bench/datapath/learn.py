#!/usr/bin/env python
"""The recorder's cost (egress_learn): new TCP connections per second through the deny path in audit mode,
without and with the recorder.

The client namespace's allowlist (10 addresses) does not hold the server, so every new connection
reaches the deny rules: in audit mode, the rate-limited LOG rule (beyond its burst it only counts)
and RETURN; with learn=true also the recorder's set match (which counts the packet) and its add
(refused: the destination is already there). This is the steady state of a destination the agent
keeps using; a new destination costs one insert more, at most learn_maxelem times per set.
Configurations alternate within each repetition; medians are reported.

Usage (root): .venv/bin/python bench/datapath/learn.py [--reps 5] [--seconds 5]
"""
import argparse
import json
import os
import statistics
import sys
import time

import run  # noqa: E402  (bench/datapath/run.py: the lab, the client and the tool)

from ansible_collections.agentguard.hardening.plugins.module_utils import _policy, _render  # noqa: E402


def payloads(learn):
    policy = _policy.build_policy({"allow": [{"name": "api", "host": "api.bench"}], "dns_servers": ["198.18.32.53"],
                                   "families": ["ipv4"], "mode": "audit", "learn": learn}, lambda name: 0)
    resolved = {"api": {"ipv4": ["198.18.64.%d" % i for i in range(1, 11)], "ipv6": []}}
    sets = _render.desired_sets(policy, resolved)
    state = _render.desired_state(policy, resolved, "ipv4", sets)
    return _render.render_persistent(state, {}), _render.render_sets_persistent(sets)


def configure(learn):
    for argv in (("iptables", "-F"), ("iptables", "-X"), ("iptables", "-P", "OUTPUT", "ACCEPT")):
        run.sh("ip", "netns", "exec", run.CLIENT, *argv)
    run.sh("ip", "netns", "exec", run.CLIENT, "ipset", "destroy", check=False)
    rules, sets = payloads(learn)
    if sets:
        run.sh("ip", "netns", "exec", run.CLIENT, "ipset", "restore", input=sets)
    run.sh("ip", "netns", "exec", run.CLIENT, "iptables-restore", input=rules)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--out", default=os.path.join(run.ROOT, "bench", "results", "datapath-learn.json"))
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/datapath needs root (network namespaces)")
    run.build_tool()
    server = run.lab_up()
    runs = {"audit": [], "audit+learn": []}
    try:
        for rep in range(args.reps):
            order = ["audit", "audit+learn"][::1 if rep % 2 == 0 else -1]
            for config in order:
                configure(config == "audit+learn")
                runs[config].append(run.rate(args.seconds))
                print("rep %d %-11s %8.0f conn/s" % (rep + 1, config, runs[config][-1]), file=sys.stderr, flush=True)
        recorded = run.sh("ip", "netns", "exec", run.CLIENT, "ipset", "save").stdout
    finally:
        run.lab_down(server)
    med = dict((c, statistics.median(v)) for c, v in runs.items())
    results = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "seconds": args.seconds,
               "median_conn_per_s": med, "runs": runs, "learn_vs_audit": round(med["audit+learn"] / med["audit"], 3),
               "recorded": [line for line in recorded.splitlines() if line.startswith("add ")]}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(results, handle, indent=1)
    print("| audit mode | audit mode + recorder | recorder / audit |")
    print("|---|---|---|")
    print("| %.0f | %.0f | %.1f %% |" % (med["audit"], med["audit+learn"], 100 * results["learn_vs_audit"]))


if __name__ == "__main__":
    main()
