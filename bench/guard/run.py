#!/usr/bin/env python
"""The guard (agentguard-guard, plugins/module_utils/_guard.py): time from a change of our rules to their
restoration, and what the guard costs while nothing happens (CPU, memory).

One network namespace (agtgd-PID; nothing else is touched). The rules are what egress_rules renders for an
empty host (_policy.build_policy, _plan.make_plan: scope host, enforce, two literal destinations and a
12-address destination held in an ipset), applied as the module applies them (_apply.apply_plan), and the
desired state written as the module writes it (_desired.sync_desired). The guard runs in the namespace from its
files laid out as the role installs them, with the system's python3.

Idle: after its first check, the guard's CPU time (its own and its finished children's: iptables-save,
ip6tables-save, ipset save of the periodic checks; /proc/PID/stat) over --idle seconds, and its RSS
(VmRSS, VmHWM). Changes: --changes changes in rotation (our OUTPUT jump deleted, the IPv6 OUTPUT policy set to
ACCEPT, our chain flushed, a foreign rule inserted before our jump, `nft flush ruleset` on the nf_tables
backend or every table flushed with the legacy tools), --gap seconds after the previous restore (longer than
_guard.FIGHT_WINDOW: a change right after each restore is a fight, which the guard slows down); each one's time runs from the
start of the command that makes the change to the end of the guard's restore (the status file's
last_restore_timestamp; the guard writes it when the restore has returned).

Usage (root): .venv/bin/python bench/guard/run.py [--changes 60] [--idle 60] [--gap 1.5] [--backend nft|legacy]
              [--out bench/results/guard.json]
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, ".cache", "collections"))

from ansible_collections.agentguard.hardening.plugins.module_utils import _apply, _desired, _guard, _plan  # noqa: E402
from ansible_collections.agentguard.hardening.plugins.module_utils import _netfilter, _policy  # noqa: E402

NS = "agtgd-%d" % os.getpid()
ENTRY = os.path.join(ROOT, "roles", "egress", "files", "agentguard-guard")
CDN = ["198.18.60.%d" % i for i in range(10, 22)]
RESOLVED = {"api": {"ipv4": ["198.18.60.2"], "ipv6": ["fd00:60::2"]}, "cdn": {"ipv4": CDN, "ipv6": []}}
TICK = os.sysconf("SC_CLK_TCK")


def sh(*argv, **kw):
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=True, **kw)


def backend_dir(tmp, backend):
    """A PATH prefix selecting the backend's tools by their plain names, as update-alternatives would."""
    directory = os.path.join(tmp, "bin")
    os.makedirs(directory)
    for family in ("ip", "ip6"):
        for tool in ("", "-save", "-restore"):
            real = shutil.which("%stables-%s%s" % (family, backend, tool))
            os.symlink(real, os.path.join(directory, "%stables%s" % (family, tool)))
    return directory


def runner(path):
    env = dict(os.environ, LC_ALL="C", PATH=path)

    def run(argv, data=None):
        proc = subprocess.run(["ip", "netns", "exec", NS] + list(argv), input=data, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, universal_newlines=True, env=env, check=False)
        return proc.returncode, proc.stdout, proc.stderr
    return run


def apply_policy(run, state_dir):
    params = dict(allow=[dict(name="api", host="198.18.60.2"), dict(name="cdn", host="cdn.test")],
                  dns_servers=["198.18.60.53"], families=["ipv4", "ipv6"])
    for name, spec in (("ports", [443]), ("protocol", "tcp"), ("subdomains", False), ("users", None), ("tls", None)):
        for entry in params["allow"]:
            entry.setdefault(name, spec)
    policy = _policy.build_policy(dict(_rules_defaults(), **params), lambda name: 0)
    nf = _netfilter.Netfilter(run, lambda name, required: name)
    live, live_sets = _plan.read_live(nf, ["ipv4", "ipv6"])
    plan = _plan.make_plan(policy, RESOLVED, ["ipv4", "ipv6"], live, live_sets)
    _apply.apply_plan(nf, plan)
    _desired.sync_desired(state_dir, plan, time.time())


def _rules_defaults():
    from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
    from ansible_collections.agentguard.hardening.plugins.module_utils._policy import ARGUMENT_SPEC
    return ArgumentSpecValidator(ARGUMENT_SPEC).validate({}).validated_parameters


def cpu_seconds(pid):
    fields = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    # utime, stime, cutime, cstime: fields 14-17 of stat, 12-15 after the command's closing parenthesis.
    return sum(int(v) for v in fields[11:15]) / float(TICK)


def memory(pid):
    values = {}
    for line in open("/proc/%d/status" % pid):
        if line.startswith(("VmRSS:", "VmHWM:")):
            values[line.split(":")[0]] = int(line.split()[1]) / 1024.0
    return values


def changes(backend):
    ipt = "iptables"
    flush = [("nft", "flush", "ruleset")] if backend == "nft" else (
        [(tool, "-t", table, flag) for tool in ("iptables", "ip6tables") for table in ("filter", "mangle", "nat")
         for flag in ("-F", "-X")] + [("iptables", "-P", "OUTPUT", "ACCEPT"), ("ip6tables", "-P", "OUTPUT", "ACCEPT")])
    return [
        ("jump deleted", [(ipt, "-D", "OUTPUT", "-j", "AGENTGUARD-EGRESS")]),
        ("ipv6 policy ACCEPT", [("ip6tables", "-P", "OUTPUT", "ACCEPT")]),
        ("chain flushed", [(ipt, "-F", "AGENTGUARD-ALLOW")]),
        ("foreign rule first", [(ipt, "-I", "OUTPUT", "1", "-p", "udp", "--dport", "514", "-j", "ACCEPT")]),
        ("ruleset flushed", flush),
    ]


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--changes", type=int, default=60)
    parser.add_argument("--idle", type=float, default=60.0)
    # Longer than the guard's FIGHT_WINDOW: a change right after each restore is a fight, which it slows down.
    parser.add_argument("--gap", type=float, default=1.5)
    parser.add_argument("--backend", choices=["nft", "legacy"], default="nft")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "guard.json"))
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (network namespaces)")
    signal.signal(signal.SIGTERM, lambda *unused: sys.exit(1))  # the namespace and the guard go (finally)
    tmp = tempfile.mkdtemp(prefix="agtgd-")
    path = backend_dir(tmp, args.backend) + os.pathsep + os.environ["PATH"]
    sh("ip", "netns", "add", NS)
    guard = None
    try:
        sh("ip", "-n", NS, "link", "set", "lo", "up")
        state, status_dir, lib = (os.path.join(tmp, d) for d in ("egress", "guard", "lib"))
        code = os.path.join(lib, "ansible_collections", "agentguard", "hardening", "plugins", "module_utils")
        os.makedirs(code)
        for name in _guard.GUARD_FILES:
            shutil.copy(os.path.join(ROOT, "plugins", "module_utils", name), code)
        run = runner(path)
        apply_policy(run, state)
        load_start = open("/proc/loadavg").read().split()[:3]
        env = dict(os.environ, AGENTGUARD_GUARD_LIB=lib, PATH=path)
        guard = subprocess.Popen(["ip", "netns", "exec", NS, "/usr/bin/python3", "-I", ENTRY, "--state-dir", state,
                                  "--guard-dir", status_dir, "--journal-socket", os.path.join(tmp, "none")],
                                 env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        status_file = os.path.join(status_dir, _guard.STATUS_FILE)

        def status():
            try:
                return _desired.read_json(status_file) or {}
            except ValueError:
                return {}
        deadline = time.time() + 20
        while status().get("in_sync") is not True:
            if time.time() > deadline:
                sys.exit("the guard did not reach in_sync: %s" % status())
            time.sleep(0.05)
        assert open("/proc/%d/comm" % guard.pid).read().strip().startswith("python"), "ip netns exec did not exec"
        first = status()
        # Idle.
        time.sleep(2)
        cpu0, t0 = cpu_seconds(guard.pid), time.monotonic()
        time.sleep(args.idle)
        cpu1, t1 = cpu_seconds(guard.pid), time.monotonic()
        idle_cpu = 100.0 * (cpu1 - cpu0) / (t1 - t0)
        mem_idle = memory(guard.pid)
        # Changes.
        rotation = changes(args.backend)
        results = []
        for index in range(args.changes):
            label, argvs = rotation[index % len(rotation)]
            count = status().get("tamper_events_total", 0)
            start = time.time()
            for argv in argvs:
                code_, out, err = run(argv)
                assert code_ == 0, (argv, err)
            deadline = time.time() + 15
            while True:
                now = status()
                if now.get("tamper_events_total", 0) > count:
                    break
                if time.time() > deadline:
                    sys.exit("change %d (%s) not restored in 15 s: %s" % (index, label, now))
                time.sleep(0.005)
            results.append(dict(kind=label, seconds=now["last_restore_timestamp"] - start,
                                guard_seconds=now["last_restore_seconds"]))
            time.sleep(args.gap)
        mem_end = memory(guard.pid)
        load_end = open("/proc/loadavg").read().split()[:3]
        times = [r["seconds"] for r in results]
        summary = dict(
            backend=args.backend, events=first.get("events"), changes=len(times),
            median=statistics.median(times), p99=percentile(times, 0.99), max=max(times), min=min(times),
            by_kind=dict((label, statistics.median([r["seconds"] for r in results if r["kind"] == label]))
                         for label, unused in rotation),
            idle_seconds=args.idle, idle_cpu_percent=idle_cpu, rss_mib_idle=mem_idle.get("VmRSS"),
            rss_mib_end=mem_end.get("VmRSS"), rss_mib_peak=mem_end.get("VmHWM"),
            load_start=load_start, load_end=load_end, started=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            results=results)
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as handle:
            json.dump(summary, handle, indent=1)
        print("backend %s (%s), %d changes: median %.3f s, p99 %.3f s, max %.3f s" % (
            args.backend, summary["events"], len(times), summary["median"], summary["p99"], summary["max"]))
        for label, value in summary["by_kind"].items():
            print("  %-20s median %.3f s" % (label, value))
        print("idle CPU over %.0f s: %.3f %% of one core; RSS %.1f MiB idle, %.1f MiB after the changes (peak %.1f MiB)" % (
            args.idle, idle_cpu, summary["rss_mib_idle"], summary["rss_mib_end"], summary["rss_mib_peak"]))
        print("load average: %s at the start, %s at the end" % (" ".join(load_start), " ".join(load_end)))
    finally:
        if guard is not None:
            guard.terminate()
            try:
                guard.wait(timeout=10)
            except subprocess.TimeoutExpired:
                guard.kill()
        subprocess.run(["ip", "netns", "del", NS], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
