#!/usr/bin/env python
"""Fleet rollout cost: playbooks/harden-agent.yml over M lab hosts, against `ansible -m ping`.

M systemd test hosts (lab containers from lab/lab.sh, reached over SSH on the lab network, as a
real fleet is) are hardened with playbooks/harden-agent.yml and the lab policy. Measured, as
wall time of the whole ansible run: the first run (fresh hosts), then REPS rounds that each run
the idempotent hardening and the ping floor in alternating order. Medians and the ratio.
Both sides use the same inventory, SSH options (pipelining, ControlPersist, ServerAliveInterval)
and forks. The full output of every run, with per-task times under --profile, goes to
bench/results/fleet-logs/<stamp>/; bench/fleet/profile.py summarises it.

The hosts share the machine's CPUs with the controller, so the lab charges every module run on a
host to the same cores the controller needs: a real fleet's hosts bring their own.

With --baseline REV, the role and playbook as of git revision REV (a git worktree, its own collections
path, its own lab variables) harden M more hosts of their own, first run included, and then run the
idempotent hardening there in every round too, the three sides in rotating order: the change and what
it is compared against, side by side in one run. Their own hosts, because a revision that renders other
rules or files (any change to module_utils changes the guard's code on the host) would change the
other's hosts on every run. The ping floor runs on the change's hosts.

Usage (root): .venv/bin/python bench/fleet/run.py [--hosts 20] [--reps 5] [--profile] [--baseline REV]
              [--ssh-keepalive 0] [--rollback-timeout 60] [--first-only] [--keep] [-v...]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_BIN = os.path.dirname(sys.executable)


class CommandFailed(RuntimeError):
    """A command failed; the message carries its output (lab.sh says why a host did not start)."""


def sh(*argv, **kw):
    check = kw.pop("check", True)
    proc = subprocess.run(argv, check=False, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                          **kw)
    if check and proc.returncode != 0:
        raise CommandFailed("%s: exit %d\n%s%s" % (" ".join(argv), proc.returncode, proc.stdout, proc.stderr))
    return proc


PROFILE = False


def env(collections=None):
    e = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_PIPELINING="true",
             ANSIBLE_FORKS="25", CONTAINERS_CONF=os.path.join(ROOT, "lab", "containers.conf"),
             ANSIBLE_HOST_KEY_CHECKING="false")
    # As on an operator's controller: Python may write the bytecode of the filter files it loads (a harness that
    # sets PYTHONDONTWRITEBYTECODE would make every worker compile them, a cost no user pays).
    e.pop("PYTHONDONTWRITEBYTECODE", None)
    if PROFILE:
        e["ANSIBLE_CALLBACKS_ENABLED"] = "ansible.posix.profile_tasks"
        e["PROFILE_TASKS_TASK_OUTPUT_LIMIT"] = "all"
    if collections:
        e["ANSIBLE_COLLECTIONS_PATH"] = collections
    e["PATH"] = VENV_BIN + os.pathsep + e["PATH"]
    return e


def baseline_checkout(rev, workdir):
    """A git worktree of rev and a collections path holding it as agentguard.hardening: (tree, playbook, path)."""
    tree = os.path.join(workdir, "baseline")
    sh("git", "-C", ROOT, "worktree", "add", "--detach", tree, rev)
    coll = os.path.join(workdir, "baseline-collections")
    os.makedirs(os.path.join(coll, "ansible_collections", "agentguard"))
    os.symlink(tree, os.path.join(coll, "ansible_collections", "agentguard", "hardening"))
    # The collections the role uses beside its own (ansible.posix, community.general) come from ours.
    return tree, os.path.join(tree, "playbooks", "harden-agent.yml"), \
        coll + os.pathsep + os.path.join(ROOT, ".cache", "collections")


def start_hosts(count, keep=False, prefix="ag-fleet-"):
    """Fresh lab hosts; when one does not start, says which and why (lab.sh's output) and stops."""
    lab = os.path.join(ROOT, "lab", "lab.sh")
    sh("bash", lab, "up")
    names = ["%s%02d" % (prefix, i) for i in range(count)]
    for index, name in enumerate(names):
        sh("bash", lab, "agent-rm", name, check=False)
        try:
            sh("bash", lab, "agent", name, "bookworm")
        except CommandFailed as exc:
            print("lab host %s (%d of %d) did not start:\n%s" % (name, index + 1, count, exc), file=sys.stderr)
            if not keep:
                for started in names[:index + 1]:
                    sh("bash", lab, "agent-rm", started, check=False)
            sys.exit(1)
    addresses = {}
    for name in names:
        out = sh("podman", "inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name,
                 env=env()).stdout.strip()
        addresses[name] = out
    return addresses


def inventory(addresses, workdir, keepalive, group_vars=None):
    key = os.path.join(ROOT, "lab", ".state", "ssh", "id_ed25519")
    ssh_args = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
    if keepalive:
        # See conntrack-pickup.sh: on a host where nothing used connection tracking before, the first
        # enforcing apply drops the SSH session's own packets until the controller sends one; a
        # keepalive from the controller revives the session within about a second.
        ssh_args += " -o ServerAliveInterval=%d -o ServerAliveCountMax=30" % keepalive
    hosts = dict((name, {"ansible_host": ip}) for name, ip in addresses.items())
    inv = {"all": {"children": {"agents": {"hosts": hosts, "vars": {
        "ansible_user": "root", "ansible_ssh_private_key_file": key,
        "ansible_ssh_common_args": ssh_args,
    }}}}}
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "hosts.yml")
    with open(path, "w") as handle:
        json.dump(inv, handle)
    # The lab policy (inventories/lab/group_vars, the baseline's own for its hosts) applies to the fleet too.
    os.symlink(group_vars or os.path.join(ROOT, "inventories", "lab", "group_vars"), os.path.join(workdir, "group_vars"))
    return path


LOG_DIR = None
RUN_NO = [0]


def timed(argv, label="run", collections=None):
    start = time.monotonic()
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                          env=env(collections), cwd=ROOT, check=False)
    elapsed = time.monotonic() - start
    if LOG_DIR:
        RUN_NO[0] += 1
        with open(os.path.join(LOG_DIR, "%02d-%s.log" % (RUN_NO[0], label)), "w") as handle:
            handle.write("# %s\n# %.1f s, rc %d, loadavg after: %s\n" % (" ".join(argv), elapsed, proc.returncode, loadavg()))
            handle.write(proc.stdout)
    if proc.returncode != 0:
        raise RuntimeError("%s failed:\n%s" % (" ".join(argv), proc.stdout[-3000:]))
    return elapsed, proc.stdout


def loadavg():
    with open("/proc/loadavg") as handle:
        return " ".join(handle.read().split()[:3])


def recap_changed(output):
    return sum(int(part.split("=")[1]) for line in output.splitlines() if " : ok=" in line
               for part in line.split() if part.startswith("changed="))


def main():
    global PROFILE, LOG_DIR
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--hosts", type=int, default=20)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rollback-timeout", type=int, default=60,
                        help="egress_rollback_timeout for the runs (default 60 s, the role's default)")
    parser.add_argument("--ssh-keepalive", type=int, default=0, metavar="SECONDS",
                        help="ssh ServerAliveInterval for both sides (default 0: none). 1 works around the hang "
                             "of the first apply described in docs/benchmarks.md on a role without its fix")
    parser.add_argument("--keep", action="store_true", help="leave the hosts running")
    parser.add_argument("--baseline", metavar="REV", help="also run the idempotent hardening of git revision REV")
    parser.add_argument("--profile", action="store_true", help="time every task (ansible.posix.profile_tasks)")
    parser.add_argument("-v", dest="verbose", action="count", default=0, help="pass -v.. to ansible-playbook")
    parser.add_argument("--first-only", action="store_true", help="stop after the first run (debugging)")
    parser.add_argument("--log-dir", default=os.path.join(ROOT, "bench", "results", "fleet-logs"),
                        help="full output of every ansible run goes here")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "fleet.json"))
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/fleet needs root (podman lab)")
    PROFILE = args.profile
    LOG_DIR = os.path.join(args.log_dir, time.strftime("%Y%m%dT%H%M%S"))
    os.makedirs(LOG_DIR)
    load_start = loadavg()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    workdir = tempfile.mkdtemp(prefix="agfleet-")
    addresses = start_hosts(args.hosts, keep=args.keep)
    inv = inventory(addresses, workdir, args.ssh_keepalive)
    base_addresses = {}
    # One batch (serial is a play keyword: extra vars only): this measures the work, not the rollout's pacing.
    extra = json.dumps({"egress_serial": ["100%"], "egress_rollback_timeout": args.rollback_timeout})
    verbose = ["-" + "v" * args.verbose] if args.verbose else []
    play = [os.path.join(VENV_BIN, "ansible-playbook"), "-i", inv, "-e", extra] + verbose + [
        os.path.join(ROOT, "playbooks", "harden-agent.yml")]
    ping = [os.path.join(VENV_BIN, "ansible"), "-i", inv, "agents", "-m", "ansible.builtin.ping"]
    runs = {"idempotent": [], "ping": []}
    sides = ["idempotent", "ping"]
    base_play, base_coll = None, None
    base_first = None
    if args.baseline:
        tree, playbook, base_coll = baseline_checkout(args.baseline, workdir)
        base_addresses = start_hosts(args.hosts, keep=args.keep, prefix="ag-fleet-b")
        base_inv = inventory(base_addresses, os.path.join(workdir, "baseline-inventory"), args.ssh_keepalive,
                             os.path.join(tree, "inventories", "lab", "group_vars"))
        base_play = [play[0], "-i", base_inv] + play[3:-1] + [playbook]
        runs["baseline"] = []
        sides = ["idempotent", "baseline", "ping"]
    try:
        timed(ping, "warmup-ping")  # host keys, ControlMaster sockets: the same warm start for both sides
        load_first = loadavg()
        first, output = timed(play, "first")
        print("first run %.1f s (loadavg %s -> %s)" % (first, load_first, loadavg()), file=sys.stderr, flush=True)
        assert recap_changed(output) > 0
        if base_play:
            timed([ping[0], "-i", base_inv] + ping[3:], "warmup-ping-baseline")
            base_first, output = timed(base_play, "first-baseline", base_coll)
            print("baseline first run %.1f s" % base_first, file=sys.stderr, flush=True)
            assert recap_changed(output) > 0
        if args.first_only:
            return
        for rep in range(args.reps):
            # Rotating order: each side goes first, second and last as often as the others.
            for side in sides[rep % len(sides):] + sides[:rep % len(sides)]:
                argv = {"idempotent": play, "baseline": base_play, "ping": ping}[side]
                elapsed, output = timed(argv, side, base_coll if side == "baseline" else None)
                if side != "ping":
                    assert recap_changed(output) == 0, "the %s re-run changed something" % side
                runs[side].append(elapsed)
                print("rep %d %-10s %.1f s" % (rep + 1, side, elapsed), file=sys.stderr, flush=True)
    finally:
        print("logs: %s" % LOG_DIR, file=sys.stderr)
        if base_play:
            sh("git", "-C", ROOT, "worktree", "remove", "--force", os.path.join(workdir, "baseline"), check=False)
        shutil.rmtree(workdir, ignore_errors=True)
        if not args.keep:
            for name in list(addresses) + list(base_addresses):
                sh("bash", os.path.join(ROOT, "lab", "lab.sh"), "agent-rm", name, check=False)
    med = dict((k, statistics.median(v)) for k, v in runs.items())
    result = {"hosts": args.hosts, "first_run_s": round(first, 1), "median_s": med, "runs": runs, "started": started,
              "ratio_idempotent_vs_ping": round(med["idempotent"] / med["ping"], 2),
              "baseline": args.baseline, "commit": sh("git", "-C", ROOT, "rev-parse", "--short", "HEAD").stdout.strip(),
              "loadavg_start": load_start, "loadavg_end": loadavg(),
              "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=1)
    print("loadavg at start: %s, at end: %s" % (load_start, result["loadavg_end"]))
    print("| M hosts | first run (s) | idempotent run (s) | ansible -m ping (s) | idempotent / ping |")
    print("|---|---|---|---|---|")
    ratio = result["ratio_idempotent_vs_ping"]
    print("| %d | %.1f | %.1f | %.1f | %.2fx |" % (args.hosts, first, med["idempotent"], med["ping"], ratio))
    if args.baseline:
        result["ratio_baseline_vs_ping"] = round(med["baseline"] / med["ping"], 2)
        result["baseline_first_run_s"] = round(base_first, 1)
        with open(args.out, "w") as handle:
            json.dump(result, handle, indent=1)
        print("baseline %s: idempotent %.1f s, %.2fx the ping floor (runs %s)"
              % (args.baseline, med["baseline"], result["ratio_baseline_vs_ping"], runs["baseline"]))


if __name__ == "__main__":
    main()
