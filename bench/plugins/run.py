#!/usr/bin/env python
"""What finding one of the collection's filters costs an Ansible worker, this checkout against a git revision.

Each task that templates one of agentguard.hardening's filters runs in a worker process forked for that task and
host; to find the filter, Ansible's loader loads every filter file of the collection, and its collection loader
compiles each module_utils those files import from source (no bytecode cache). This measures that cost the way a
worker pays it: a fresh interpreter that has Ansible's templating and its builtin filters loaded (as the
controller has before it forks), then one timed filter_loader.get() of a filter of the role's every-run path.
The sides alternate (this checkout, then REV, then REV first); medians and ranges in milliseconds.

Usage: .venv/bin/python bench/plugins/run.py [--baseline REV] [--reps 15] [--out bench/results/plugins.json]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The filters of the role's every-run path: the input check, the host query, the decision, the published warnings.
FILTERS = ["egress_input_errors", "egress_host_query", "egress_decide", "egress_coverage_warnings"]

CHILD = r"""
import json, sys, time
from ansible.plugins.loader import filter_loader, init_plugin_loader
init_plugin_loader([sys.argv[1]])
import ansible.template  # noqa: F401  (the controller's templating, loaded before the fork)
filter_loader.get("ansible.builtin.to_json")
start = time.perf_counter()
assert filter_loader.get("agentguard.hardening." + sys.argv[2]) is not None
print(json.dumps(time.perf_counter() - start))
"""


def sh(*argv):
    return subprocess.run(argv, check=True, stdout=subprocess.PIPE, universal_newlines=True).stdout


def collections_of(tree, workdir, label):
    path = os.path.join(workdir, label)
    os.makedirs(os.path.join(path, "ansible_collections", "agentguard"))
    os.symlink(tree, os.path.join(path, "ansible_collections", "agentguard", "hardening"))
    return path


def lookup(collections, name):
    env = dict(os.environ)
    # As on an operator's controller: Python may write the filter files' bytecode (Ansible's collection loader
    # never does for module_utils).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    out = subprocess.run([sys.executable, "-c", CHILD, collections, name], check=True, env=env,
                         stdout=subprocess.PIPE, universal_newlines=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--baseline", metavar="REV", help="also measure git revision REV (a worktree)")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "plugins.json"))
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="agplugins-")
    sides = {"this": collections_of(ROOT, workdir, "this")}
    tree = None
    if args.baseline:
        tree = os.path.join(workdir, "baseline")
        sh("git", "-C", ROOT, "worktree", "add", "--detach", tree, args.baseline)
        sides["baseline"] = collections_of(tree, workdir, "baseline")
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    load = open("/proc/loadavg").read().split()[:3]
    times = dict((side, dict((name, []) for name in FILTERS)) for side in sides)
    try:
        for side in sides:  # one warm-up each: the filter files' bytecode is written once, as on a controller
            lookup(sides[side], FILTERS[0])
        order = list(sides)
        for rep in range(args.reps):
            for side in order[rep % len(order):] + order[:rep % len(order)]:
                for name in FILTERS:
                    times[side][name].append(lookup(sides[side], name))
    finally:
        if tree:
            sh("git", "-C", ROOT, "worktree", "remove", "--force", tree)
    result = {"started": started, "loadavg_start": load, "loadavg_end": open("/proc/loadavg").read().split()[:3],
              "commit": sh("git", "-C", ROOT, "rev-parse", "--short", "HEAD").strip(), "baseline": args.baseline,
              "reps": args.reps, "seconds": times}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=1)
    print("%-26s %s" % ("filter", "  ".join("%-28s" % side for side in sides)))
    for name in FILTERS:
        cells = []
        for side in sides:
            ms = [1000 * t for t in times[side][name]]
            cells.append("%6.1f ms (%5.1f-%6.1f)      " % (statistics.median(ms), min(ms), max(ms)))
        print("%-26s %s" % (name, "  ".join(cells)))
    if args.baseline:
        ratios = [statistics.median(times["baseline"][n]) / statistics.median(times["this"][n]) for n in FILTERS]
        print("baseline / this: %s" % ", ".join("%.1fx" % r for r in ratios))


if __name__ == "__main__":
    main()
