#!/usr/bin/env python
"""Where the time of the fleet runs goes: per-task medians from `bench/fleet/run.py --profile` logs.

Reads the ansible.posix.profile_tasks recap of every *-idempotent.log (or --kind baseline, first) in a log
directory of bench/fleet/run.py and prints, per task, the median time over the runs (each task's
time is its wall time across all hosts of the batch), largest first, with its share of the run.

Usage: .venv/bin/python bench/fleet/profile.py bench/results/fleet-logs/<stamp> [--kind idempotent] [--top 25]
"""
import argparse
import glob
import os
import re
import statistics

TASK = re.compile(r"^(?P<name>.+?) -+ (?P<secs>[0-9.]+)s$")
TOTAL = re.compile(r"^# (?P<secs>[0-9.]+) s, rc")


def parse(path):
    tasks, total, in_recap = {}, None, False
    with open(path) as handle:
        for line in handle:
            line = line.rstrip("\n")
            match = TOTAL.match(line)
            if match and total is None:
                total = float(match.group("secs"))
            if line.startswith("TASKS RECAP"):
                in_recap = True
                continue
            if in_recap:
                match = TASK.match(line)
                if match:
                    name = match.group("name").strip()
                    tasks[name] = tasks.get(name, 0.0) + float(match.group("secs"))
    return tasks, total


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("logdir")
    parser.add_argument("--kind", default="idempotent", choices=["idempotent", "baseline", "first"])
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    runs = [parse(p) for p in sorted(glob.glob(os.path.join(args.logdir, "*-%s.log" % args.kind)))]
    runs = [r for r in runs if r[0]]
    if not runs:
        raise SystemExit("no profiled %s runs in %s (run.py --profile)" % (args.kind, args.logdir))
    names = set(n for tasks, _wall in runs for n in tasks)
    med = dict((n, statistics.median(tasks.get(n, 0.0) for tasks, _wall in runs)) for n in names)
    total = statistics.median(wall for _tasks, wall in runs)
    print("%d %s runs, median wall time %.1f s, median sum of task times %.1f s, %d tasks"
          % (len(runs), args.kind, total, statistics.median(sum(t.values()) for t, _wall in runs), len(names)))
    print("| task | median (s) | share |")
    print("|---|---|---|")
    for name in sorted(names, key=lambda n: -med[n])[:args.top]:
        print("| %s | %.1f | %.0f %% |" % (
            name.replace("agentguard.hardening.egress : ", ""), med[name], 100 * med[name] / total))
    rest = sorted(names, key=lambda n: -med[n])[args.top:]
    if rest:
        print("| %d other tasks | %.1f | %.0f %% |" % (
            len(rest), sum(med[n] for n in rest), 100 * sum(med[n] for n in rest) / total))


if __name__ == "__main__":
    main()
