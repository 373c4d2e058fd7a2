# Run by the role egress on the host (python3 -c), read-only: everything an idempotent run needs to
# know about the host, in one command instead of a module per question. Prints one JSON document.
# Argument: JSON {"manager": "dpkg"|"rpm", "packages": [...], "active": [unit...],
#                 "enabled": [unit...], "paths": [path...], "users": [name...]}
import hashlib
import json
import os
import pwd
import stat
import subprocess
import sys

query = json.loads(sys.argv[1])
env = dict(os.environ, LC_ALL="C")


def run(argv):
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              universal_newlines=True, env=env, check=False)
    except OSError:
        return ""
    return proc.stdout


def installed(manager, names):
    if not names:
        return []
    if manager == "dpkg":
        out = run(["dpkg-query", "-W", "-f=${Package} ${db:Status-Abbrev}\n"] + names)
        return sorted(set(l.split()[0] for l in out.splitlines() if l.split()[1:2] == ["ii"]))
    out = run(["rpm", "-q", "--qf", "%{NAME}\n"] + names)
    return sorted(set(l.strip() for l in out.splitlines()) & set(names))


def unit_states(verb, units):
    # One call per unit: with several, systemctl stops at the first unknown one.
    return dict((unit, run(["systemctl", verb, unit]).strip() or "unknown") for unit in units)


def describe(path):
    try:
        info = os.lstat(path)
    except OSError:
        return None
    entry = {"type": "file" if stat.S_ISREG(info.st_mode) else "other",
             "mode": "%04o" % stat.S_IMODE(info.st_mode), "uid": info.st_uid, "gid": info.st_gid}
    if entry["type"] == "file":
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(65536), b""):
                digest.update(block)
        entry["sha256"] = digest.hexdigest()
    return entry


def missing_users(names):
    # A numeric uid needs no passwd entry (the rules match the uid itself).
    missing = []
    for name in names:
        if str(name).isdigit():
            continue
        try:
            pwd.getpwnam(str(name))
        except KeyError:
            missing.append(name)
    return missing


systemd = os.path.isdir("/run/systemd/system")
paths = dict((p, describe(p)) for p in query.get("paths", []))
print(json.dumps({
    "systemd": systemd,
    "packages": installed(query.get("manager"), query.get("packages", [])),
    "active": unit_states("is-active", query.get("active", [])) if systemd else {},
    "enabled": unit_states("is-enabled", query.get("enabled", [])) if systemd else {},
    "paths": dict((p, e) for p, e in paths.items() if e is not None),
    "missing_users": missing_users(query.get("users", [])),
}, sort_keys=True))
