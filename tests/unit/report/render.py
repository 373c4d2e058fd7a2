"""Run playbooks/egress-report.yml as an operator runs it, on host results made here (no host is contacted)."""
import datetime
import json
import os
import subprocess
import sys

from ansible_collections.agentguard.hardening.plugins.module_utils import _denials as D
from ansible_collections.agentguard.hardening.plugins.module_utils import _guard as G
from ansible_collections.agentguard.hardening.plugins.module_utils import _learn as L
from ansible_collections.agentguard.hardening.plugins.module_utils import _log_sources as S

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
PREFIX = "[EGRESS-DENIED] "
UTC = datetime.timezone.utc


def kernel_line(when, dst, dpt, spt, src="198.18.77.2", uid=1000, inside="", proto="TCP"):
    """A denied SYN (or UDP datagram) as dmesg --time-format iso writes it."""
    owner = "" if inside else " UID=%d GID=%d" % (uid, uid)
    return ("%s %sIN=%s OUT=eth0 SRC=%s DST=%s LEN=60 TTL=64 PROTO=%s SPT=%d DPT=%d SYN%s"
            % (when.strftime("%Y-%m-%dT%H:%M:%S,%f+00:00"), PREFIX, inside, src, dst, proto, spt, dpt, owner))


def tamper_line(when, differences, seconds, opened=None, restored=True):
    """The guard's journal entry for one restoration, as _guard.tamper_fields writes it (json, as journalctl -o json)."""
    found = [G.Difference(kind, family, table) for family, table, kind in (d.split("/") for d in differences)]
    fields = G.tamper_fields(found, seconds, opened, "sha256:abc", restored, None if restored else "iptables-restore failed")
    entry = dict((key, str(value)) for key, value in fields.items())
    entry["__REALTIME_TIMESTAMP"] = str(int(when.timestamp() * 10 ** 6))
    return json.dumps(entry)


def host_result(lines, bucket_seconds, since, now, users=None, counters=None, oldest=None, tamper=()):
    """What egress_denials returns for these kernel lines. counters: {family: {path: packets}} (None: not read);
    oldest: the time of the log source's oldest line (None: it reaches back before since); tamper: the guard's
    journal entries (json lines, _guard.tamper_fields with __REALTIME_TIMESTAMP)."""
    records, stats = D.collect(lines, PREFIX, since=since, now=now)
    records.sort(key=D.time_order)
    D.mark_attempts(D.mark_canary(records))
    groups = D.aggregate(records)
    for group in groups:
        group["user"] = (users or {}).get(group["uid"])
        group["sender_text"] = D.sender_text(group)
    limits = [{"family": f, "table": "filter", "chain": "AGENTGUARD-DENY", "limit": "10/min", "burst": 20}
              for f in ("ipv4", "ipv6")]

    def stamp(when):
        return when.isoformat().replace("+00:00", "Z")

    result = {
        "changed": False, "denials": groups, "records": records, "timeline": D.timeline(records, bucket_seconds),
        "window": {"start": stamp(since), "end": stamp(now), "bucket_seconds": bucket_seconds},
        "total": len(records), "attempts": sum(1 for r in records if r["attempt"] and not r["canary"]),
        "forwarded_total": sum(1 for r in records if r["direction"] == "forward"),
        "forwarded_attempts": sum(1 for r in records if r["direction"] == "forward" and r["attempt"]),
        "canary_total": sum(1 for r in records if r["canary"]),
        "canary_attempts": sum(1 for r in records if r["canary"] and r["attempt"]),
        "log_limits": limits, "log_limit_text": D.limit_text(limits), "source": "journal" if oldest is None else "dmesg",
        "stats": stats,
        "refused_names": [], "refused_total": 0, "refused_distinct": 0, "dns_source": "none",
        "dns_stats": {"lines": 0, "queries": 0, "refused": 0, "malformed": 0, "foreign": 0, "older": 0, "no_time": 0},
        "coverage": S.coverage("journal" if oldest is None else "dmesg", oldest, since, now, oldest is None),
        "tamper_events": [e for e in (S.parse_guard_entry(line) for line in tamper) if e],
        "tamper_source": "journal", "guard": None,
    }
    result["tamper_total"] = len(result["tamper_events"])
    loaded = now - datetime.timedelta(hours=30)
    packets = dict((f, dict((p, {"packets": n, "bytes": 60 * n}) for p, n in paths.items()))
                   for f, paths in (counters or {}).items())
    total = sum(n for paths in (counters or {}).values() for n in paths.values()) if counters is not None else None
    result.update(counters=packets, denied_packets=total, counters_mode="enforce" if counters else None,
                  denied_packets_forwarded=sum((paths.get("forward") or 0) for paths in (counters or {}).values()) or None,
                  counters_since=stamp(loaded), counters_since_reason="boot", counters_errors=[],
                  counters_text=("%d denied packet(s), exact kernel counters, since the rules were loaded at %s (boot)"
                                 % (total, stamp(loaded)) if total is not None else "no deny rule counters could be read"))
    return result


def learned_result(save, answers, users, now):
    """What egress_learned returns for the recorder's sets as `ipset save` prints them (save), the resolver's answers
    [(name, address)] and the users recorded apart {uid: name}, read at `now`."""
    sets, entries = L.parse_recorder(save, int(now.timestamp()))
    return {"changed": False, "now": now.isoformat(), "sets": sets, "unresolved": {},
            "entries": L.join(entries, L.name_index({"dns": answers}), dict((str(k), v) for k, v in users.items()))}


def run_report(work, agents, results=None, since="24h", timeout=180):
    """agents: inventory host name -> host variables (egress_learn: true with egress_report_learned, a registered
    egress_learned result, for the learned destinations); results: host name -> a registered egress_denials
    result (the collecting play then matches no host: --limit localhost). Returns (process, out dir)."""
    localhost = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    hosts = {}
    for name, variables in agents.items():
        hosts[name] = dict(variables)
        if results and name in results:
            hosts[name]["egress_report_host"] = results[name]
    inventory = {"all": {"hosts": {"localhost": localhost}, "children": {"agents": {"hosts": hosts}}}}
    os.makedirs(str(work), exist_ok=True)
    path = os.path.join(str(work), "inventory.json")
    with open(path, "w") as handle:
        json.dump(inventory, handle)
    out = os.path.join(str(work), "out")
    collections = D.__file__.rsplit(os.sep + "ansible_collections" + os.sep, 1)[0]
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_COLLECTIONS_PATH=collections, ANSIBLE_HOST_KEY_CHECKING="False")
    argv = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", path,
            os.path.join(ROOT, "playbooks", "egress-report.yml"), "-e", "egress_report_dir=%s" % out,
            "-e", "egress_report_since=%s" % since]
    if results:
        argv += ["--limit", "localhost"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout, check=False)
    return proc, out
