#!/usr/bin/env python
"""Apply cost: one agentguard.hardening.egress_rules task against an ansible.builtin.iptables loop.

Both sides build the same effective ruleset (chains, loopback, replies, DNS to one resolver,
N allowed IPv4 and N allowed IPv6 addresses on 443, rate-limited LOG, DROP, jump, OUTPUT policy)
in a fresh network namespace, through ansible-playbook with a local connection whose Python runs
inside the namespace. Per N, each repetition runs both sides in alternating order and measures
three runs each: first apply (fresh namespace), idempotent re-run, check-mode run. Reported
figures are medians of the task time (the JSON callback's task durations, so ansible-playbook's
start-up cost is excluded) and their ratio. Beside them, the Ansible floor: an ansible.builtin.ping task
in the same namespace right before or after our idempotent run (the order alternating by repetition),
and the ratio of our idempotent run to it; and the argument floor: a module that does nothing but take
the same arguments and return the result our idempotent run returned (library/argument_floor.py), run
right after the ping. What it costs above ping is Ansible's for carrying N entries in and the result out;
what ours costs above it is ours.

Usage (root): .venv/bin/python bench/apply/run.py [--sizes 10,100,1000] [--forms entries,list] [--reps 5] [--loop-reps K]
                 [--out FILE] [--resume]
       .venv/bin/python bench/apply/run.py --report --out FILE

--forms says how our task writes the 2N addresses: entries (one allow entry per address, the default and the
form of the loop comparison) or list (one entry whose host lists them all, matched through one set per family);
each form is its own row, with its own floors.
--loop-reps K measures the loop side in the first K repetitions only (still alternating with ours
there) and ours in all of them: at N = 1,000 one loop repetition (three runs) takes about an hour
on a small machine. The table then says how many runs each median is of.
--resume continues the repetitions recorded in --out (each repetition, a pair of both sides in
alternating order, is kept once complete), so the repetitions of a large N can be measured over
several sittings; every repetition records its start time and load average.
--report prints the tables of --out (medians of its complete repetitions, then one row per
repetition with its start, load average and ratios) without measuring, also while a run goes on.
"""
import argparse
import datetime
import ipaddress
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NETNS_PYTHON = os.path.join(ROOT, "tests", "netns", "netns-python")
PY = sys.executable
DNS4, DNS6 = "198.18.0.53", "fd00:a9e:1::53"
LOG_PREFIX = "[EGRESS-DENIED] "


def addresses(n):
    v4 = [str(ipaddress.ip_address("198.18.16.0") + i + 1) for i in range(n)]
    v6 = [str(ipaddress.ip_address("fd00:a9e:16::") + i + 1) for i in range(n)]
    return v4, v6


def ours_play(n, form="entries"):
    """Our task: the 2N addresses as one allow entry each ("entries"), or as one entry whose host lists them all
    ("list", matched through one set per family above 8 addresses)."""
    v4, v6 = addresses(n)
    if form == "list":
        allow = [{"name": "api", "host": v4 + v6}]
    else:
        allow = [{"name": "d%05d-4" % i, "host": a} for i, a in enumerate(v4)]
        allow += [{"name": "d%05d-6" % i, "host": a} for i, a in enumerate(v6)]
    return [{"hosts": "localhost", "gather_facts": False, "tasks": [{
        "name": "Egress allowlist (agentguard.hardening.egress_rules)",
        "agentguard.hardening.egress_rules": {"allow": allow, "dns_servers": [DNS4, DNS6]},
    }]}]


def loop_items(n):
    """The same ruleset as ansible.builtin.iptables parameters, one item per rule."""
    v4, v6 = addresses(n)
    items = []
    for version, family_addresses, dns, tag in (("ipv4", v4, DNS4, "4"), ("ipv6", v6, DNS6, "6")):
        def rule(**kw):
            kw.setdefault("ip_version", version)
            items.append(kw)
        for chain in ("AGENTGUARD-EGRESS", "AGENTGUARD-ALLOW", "AGENTGUARD-DENY"):
            rule(chain=chain, chain_management=True)
        rule(chain="AGENTGUARD-ALLOW", out_interface="lo", jump="ACCEPT")
        rule(chain="AGENTGUARD-ALLOW", ctstate=["RELATED", "ESTABLISHED"], jump="ACCEPT")
        if tag == "6":
            for icmp_type in ("133", "135", "136"):
                rule(chain="AGENTGUARD-ALLOW", protocol="ipv6-icmp", icmp_type=icmp_type, jump="ACCEPT",
                     comment="agentguard: neighbour discovery")
        for proto in ("udp", "tcp"):
            rule(chain="AGENTGUARD-ALLOW", destination=dns, protocol=proto, destination_port="53",
                 ctstate=["NEW"], comment="agentguard: dns", jump="ACCEPT")
        for index, address in enumerate(family_addresses):
            rule(chain="AGENTGUARD-ALLOW", destination=address, protocol="tcp", destination_port="443",
                 ctstate=["NEW"], comment="agentguard: d%05d-%s" % (index, tag), jump="ACCEPT")
        rule(chain="AGENTGUARD-ALLOW", jump="AGENTGUARD-DENY")
        rule(chain="AGENTGUARD-DENY", limit="10/min", limit_burst="20", jump="LOG", log_prefix=LOG_PREFIX)
        rule(chain="AGENTGUARD-DENY", jump="DROP")
        rule(chain="AGENTGUARD-EGRESS", jump="AGENTGUARD-ALLOW")
        rule(chain="OUTPUT", jump="AGENTGUARD-EGRESS", action="insert", rule_num="1")
        rule(chain="OUTPUT", policy="DROP")
    return items


def ping_play():
    return [{"hosts": "localhost", "gather_facts": False, "tasks": [{
        "name": "The Ansible floor (ansible.builtin.ping)", "ansible.builtin.ping": {}}]}]


def argument_floor_play(n, result_file, form="entries"):
    """The argument floor: our arguments, our result, no work (library/argument_floor.py)."""
    args = dict(ours_play(n, form)[0]["tasks"][0]["agentguard.hardening.egress_rules"], result_file=result_file)
    return [{"hosts": "localhost", "gather_facts": False, "tasks": [{
        "name": "The argument floor (same arguments and result, no work)", "argument_floor": args}]}]


def loop_play(n):
    return [{"hosts": "localhost", "gather_facts": False, "tasks": [{
        "name": "Egress allowlist (ansible.builtin.iptables loop)",
        "ansible.builtin.iptables": "{{ item }}",
        "loop": loop_items(n),
        "loop_control": {"label": "{{ item.chain }} {{ item.destination | default(item.jump | default(item.policy | default(''))) }}"},
    }]}]


def task_seconds(output):
    total = 0.0
    for play in output["plays"]:
        for task in play["tasks"]:
            d = task["task"]["duration"]
            start = datetime.datetime.fromisoformat(d["start"].replace("Z", "+00:00"))
            end = datetime.datetime.fromisoformat(d["end"].replace("Z", "+00:00"))
            total += (end - start).total_seconds()
    return total


def run_play(playfile, netns, check=False, result=None):
    """(task seconds, changed) of playfile in netns; with a list `result`, the first task's result is appended."""
    env = dict(os.environ, AGENTGUARD_NETNS=netns, AGENTGUARD_NETNS_PYTHON=PY,
               ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json", ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"),
               ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_INVENTORY_UNPARSED_WARNING="false",
               ANSIBLE_LIBRARY=os.path.join(os.path.dirname(os.path.abspath(__file__)), "library"))
    env["PATH"] = os.path.dirname(PY) + os.pathsep + env["PATH"]
    argv = [os.path.join(os.path.dirname(PY), "ansible-playbook"), "-i", "localhost,", "-c", "local",
            "-e", "ansible_python_interpreter=" + NETNS_PYTHON, playfile] + (["--check"] if check else [])
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                          env=env, cwd=ROOT, timeout=3600, check=False)
    output = json.loads(proc.stdout)
    stats = output["stats"]["localhost"]
    if stats.get("failures") or stats.get("unreachable"):
        raise RuntimeError("play failed: %s" % proc.stdout[-2000:])
    if result is not None:
        result.append(output["plays"][0]["tasks"][0]["hosts"]["localhost"])
    return task_seconds(output), stats.get("changed", 0)


def netns(name, action):
    subprocess.run(["ip", "netns", action, name], check=action == "add")
    if action == "add":
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)


def measure(side, playfile, n, rep, ping=None, form="entries"):
    """The three runs of one side in a fresh namespace; with ping (ours), the floors beside the idempotent run."""
    name = "agbench-%s-%d-%d%s" % (side, n, rep, "" if form == "entries" else "-" + form)
    netns(name, "add")
    floor = argument_floor = None
    try:
        first, changed_first = run_play(playfile, name)
        if ping and rep % 2:
            floor = run_play(ping, name)[0]
        returned = []
        idem, changed_idem = run_play(playfile, name, result=returned)
        if ping and not rep % 2:
            floor = run_play(ping, name)[0]
        if ping:
            argument_floor = measure_argument_floor(n, name, returned[0], form)
        check, changed_check = run_play(playfile, name, check=True)
        save = subprocess.run(["ip", "netns", "exec", name, "iptables-save", "-t", "filter"], stdout=subprocess.PIPE,
                              universal_newlines=True, check=True).stdout
    finally:
        netns(name, "del")
    assert changed_first and not changed_idem and not changed_check, (side, changed_first, changed_idem, changed_check)
    rules = sum(1 for line in save.splitlines() if line.startswith("-A "))
    result = {"first": first, "idempotent": idem, "check": check, "rules_v4": rules}
    if floor is not None:
        result["ping"] = floor
    if argument_floor is not None:
        result["argument_floor"] = argument_floor
    return result


def measure_argument_floor(n, netns_name, returned, form="entries"):
    """The argument floor's task time, given what our idempotent run returned."""
    workdir = tempfile.mkdtemp(prefix="agbench-floor-")
    try:
        result_file = os.path.join(workdir, "result.json")
        with open(result_file, "w") as handle:
            json.dump(dict((k, v) for k, v in returned.items() if not k.startswith("_ansible") and k != "action"), handle)
        play = os.path.join(workdir, "floor.yml")
        with open(play, "w") as handle:
            json.dump(argument_floor_play(n, result_file, form), handle)
        return run_play(play, netns_name)[0]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--forms", default="entries",
                        help="how our task lists the addresses, comma-separated: entries (one allow entry per address), "
                             "list (one entry whose host lists them); the loop side is measured with entries only")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--loop-reps", type=int, default=None,
                        help="measure the iptables loop in the first K repetitions only (default: all)")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "apply.json"))
    parser.add_argument("--resume", action="store_true",
                        help="continue the complete repetitions already recorded in --out")
    parser.add_argument("--report", action="store_true",
                        help="print the tables of the results in --out and measure nothing")
    args = parser.parse_args()
    if args.report:
        with open(args.out) as handle:
            print(table(json.load(handle)))
        return
    if os.geteuid() != 0:
        sys.exit("bench/apply needs root (network namespaces)")
    results = {"machine": machine(), "started": now(), "sizes": {}}
    if args.resume and os.path.exists(args.out):
        with open(args.out) as handle:
            results = json.load(handle)
        results.setdefault("resumed", []).append(now())
    workdir = tempfile.mkdtemp(prefix="agbench-")
    loop_reps = args.reps if args.loop_reps is None else min(args.loop_reps, args.reps)

    def save():
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as handle:
            json.dump(results, handle, indent=1)

    cases = [(int(size), form) for size in args.sizes.split(",") for form in args.forms.split(",")]
    for n, form in cases:
        plays = {"ours": os.path.join(workdir, "ours-%d-%s.yml" % (n, form)),
                 "loop": os.path.join(workdir, "loop-%d.yml" % n), "ping": os.path.join(workdir, "ping.yml")}
        for side, play in (("ours", ours_play(n, form)), ("loop", loop_play(n)), ("ping", ping_play())):
            with open(plays[side], "w") as handle:
                json.dump(play, handle)  # JSON is YAML
        # The entries form keeps the plain size as its key (the results files before --forms).
        key = str(n) if form == "entries" else "%d %s" % (n, form)
        entry = results["sizes"].setdefault(key, {"runs": {"ours": [], "loop": []}, "loadavg_start": loadavg(), "form": form})
        runs = entry["runs"]
        # Until this sitting ends, the file's medians are those of its complete repetitions (--report).
        entry.pop("summary", None)
        entry.pop("loadavg_end", None)
        done = complete_reps(runs, loop_reps if form == "entries" else 0)
        for side in runs:  # a repetition cut short is measured again, both sides
            runs[side] = [r for r in runs[side] if r.get("rep", 0) < done]
        for rep in range(done, args.reps):
            order = ("ours", "loop") if rep % 2 == 0 else ("loop", "ours")
            started, load = now(), loadavg()
            for side in order:
                if side == "loop" and (rep >= loop_reps or form != "entries"):
                    continue
                runs[side].append(measure(side, plays[side], n, rep, plays["ping"] if side == "ours" else None, form))
                runs[side][-1].update(rep=rep, rep_started=started, loadavg_before=load, loadavg_after=loadavg())
                print("N=%d rep %d %s: %s" % (n, rep + 1, side, runs[side][-1]), file=sys.stderr, flush=True)
                save()
        entry["loadavg_end"] = loadavg()
        entry["summary"] = summarise(runs)
        save()
    print(table(results))


def summarise(runs):
    """Medians of each kind of run on both sides, their ratio, and how many runs they are of."""
    summary = {}
    for kind in ("first", "idempotent", "check"):
        ours = statistics.median(r[kind] for r in runs["ours"])
        loop = statistics.median(r[kind] for r in runs["loop"]) if runs["loop"] else None
        summary[kind] = {"ours_s": round(ours, 3), "loop_s": loop and round(loop, 3),
                         "ratio": loop and round(loop / ours, 1)}
    pings = [r for r in runs["ours"] if "ping" in r]
    if pings:
        # The ratio of each repetition (its idempotent run over the ping beside it), then their median.
        summary["floor"] = {"ping_s": round(statistics.median(r["ping"] for r in pings), 3),
                            "idempotent_vs_ping": round(statistics.median(r["idempotent"] / r["ping"] for r in pings), 2),
                            "idempotent_vs_ping_range": [round(min(r["idempotent"] / r["ping"] for r in pings), 2),
                                                         round(max(r["idempotent"] / r["ping"] for r in pings), 2)],
                            "reps": len(pings)}
        floors = [r for r in pings if "argument_floor" in r]
        if floors:
            summary["floor"].update(
                argument_floor_s=round(statistics.median(r["argument_floor"] for r in floors), 3),
                argument_floor_vs_ping=round(statistics.median(r["argument_floor"] / r["ping"] for r in floors), 2),
                idempotent_vs_argument_floor=round(statistics.median(r["idempotent"] / r["argument_floor"] for r in floors), 2))
    summary["rules_v4"] = {"ours": runs["ours"][0]["rules_v4"], "loop": runs["loop"][0]["rules_v4"] if runs["loop"] else None}
    summary["reps"] = {"ours": len(runs["ours"]), "loop": len(runs["loop"])}
    return summary


def complete_reps(runs, loop_reps):
    """How many repetitions from the first are complete: ours measured, and the loop where it runs."""
    ours = set(r.get("rep", i) for i, r in enumerate(runs["ours"]))
    loop = set(r.get("rep", i) for i, r in enumerate(runs["loop"]))
    done = 0
    while done in ours and (done in loop or done >= loop_reps):
        done += 1
    return done


def now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def loadavg():
    with open("/proc/loadavg") as handle:
        return " ".join(handle.read().split()[:3])


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = next((l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal")), "0")
    ver = subprocess.run([os.path.join(os.path.dirname(PY), "ansible"), "--version"], stdout=subprocess.PIPE,
                         universal_newlines=True, check=False).stdout.splitlines()[0]
    ipt = subprocess.run(["iptables", "--version"], stdout=subprocess.PIPE, universal_newlines=True, check=False).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_gib": round(int(mem) / 1048576, 1), "kernel": os.uname().release,
            "ansible": ver, "iptables": ipt}


def table(results):
    lines = ["| N (per family) | run | egress_rules (s) | iptables loop (s) | loop / ours | runs (ours/loop) |",
             "|---|---|---|---|---|---|"]
    for n, data in results["sizes"].items():
        # A results file still being measured has no summary yet: take its complete repetitions.
        summary = data.get("summary")
        if not summary:
            done = complete_reps(data["runs"], float("inf") if data.get("form", "entries") == "entries" else 0)
            if not done:
                lines.append("| %s | (no complete repetition yet) | | | | |" % n)
                continue
            summary = summarise({side: [r for i, r in enumerate(runs) if r.get("rep", i) < done]
                                 for side, runs in data["runs"].items()})
        reps = summary["reps"]
        for kind in ("first", "idempotent", "check"):
            s = summary[kind]
            loop = ("%.2f" % s["loop_s"], "%.1fx" % s["ratio"]) if s["loop_s"] else ("-", "-")
            lines.append("| %s | %s | %.2f | %s | %s | %s/%s |" % (
                n, kind, s["ours_s"], loop[0], loop[1], reps.get("ours", "?"), reps.get("loop", "?")))
    floors = []
    for n, data in results["sizes"].items():
        floor = data.get("summary", {}).get("floor")
        if floor:
            spread = floor.get("idempotent_vs_ping_range")
            floors.append("| %s | %.2f | %.2f | %.2fx%s | %s | %s | %s | %d |" % (
                n, data["summary"]["idempotent"]["ours_s"], floor["ping_s"], floor["idempotent_vs_ping"],
                " (%.2f-%.2f)" % tuple(spread) if spread else "",
                "%.2f" % floor["argument_floor_s"] if "argument_floor_s" in floor else "-",
                "%.2fx" % floor["argument_floor_vs_ping"] if "argument_floor_vs_ping" in floor else "-",
                "%.2fx" % floor["idempotent_vs_argument_floor"] if "idempotent_vs_argument_floor" in floor else "-",
                floor["reps"]))
    if floors:
        lines += ["", "| N (per family) | egress_rules idempotent (s) | ansible.builtin.ping (s) | idempotent / ping "
                  "(median of each repetition's ratio, range) | argument floor (s) | argument floor / ping | "
                  "idempotent / argument floor | reps |", "|---|---|---|---|---|---|---|---|"] + floors
    loads = ["N=%s: loadavg %s at start, %s at end" % (n, d.get("loadavg_start"), d.get("loadavg_end", "(not finished)"))
             for n, d in results["sizes"].items()]
    return "\n".join(lines + [""] + loads + [""] + rep_table(results))


def rep_table(results):
    """One row per repetition: its start, both sides' runs and ratios, the load around it."""
    kinds = ("first", "idempotent", "check")

    def times(run):
        return "/".join("%.2f" % run[k] for k in kinds)

    lines = ["| N | rep | started (UTC) | ours first/idem/check (s) | loop first/idem/check (s) | loop / ours | loadavg before, after |",
             "|---|---|---|---|---|---|---|"]
    for n, data in results["sizes"].items():
        loop = {r.get("rep", i): r for i, r in enumerate(data["runs"]["loop"])}
        for i, ours in enumerate(data["runs"]["ours"]):
            rep = ours.get("rep", i)
            other = loop.get(rep)
            ratio = "/".join("%.0fx" % (other[k] / ours[k]) for k in kinds) if other else "-"
            # Even repetitions run ours first, odd ones the loop first (main).
            last = other if other and rep % 2 == 0 else ours
            lines.append("| %s | %d | %s | %s | %s | %s | %s, %s |" % (
                n, rep + 1, ours.get("rep_started", "?").replace("T", " ")[:16], times(ours),
                times(other) if other else "-", ratio, ours.get("loadavg_before", "?"), last.get("loadavg_after", "?")))
    return lines


if __name__ == "__main__":
    main()
