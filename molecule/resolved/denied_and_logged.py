#!/usr/bin/env python
# SPDX-License-Identifier: GPL-3.0-or-later
"""One DNS query from a test host to a server its policy denies, as a user: it must get no answer,
and the kernel must log it (LOG line with the policy's prefix, the host's source address, that
server, UDP port 53 and the user's uid). Run on the controller by side_effect.yml.

    denied_and_logged.py HOST USER SERVER PREFIX

The LOG rule is rate limited and verify's flood empties its bucket: a query that got no answer
but no LOG line either is asked again after a pause, a bounded number of times.
"""
import ipaddress
import json
import re
import subprocess
import sys
import time

ATTEMPTS, PAUSE = 8, 8.0  # the seed's 10/minute refills a token every 6 s


def dmesg():
    """(stamp, text) of each kernel log line (the ring buffer is shared with the test hosts)."""
    out = subprocess.run(["dmesg"], check=True, capture_output=True, text=True, errors="replace").stdout
    return [(float(m.group(1)), m.group(2)) for m in (re.match(r"\[\s*(\d+\.\d+)\]\s?(.*)$", line)
                                                      for line in out.splitlines()) if m]


def logged(since, prefix, fields):
    """LOG lines stamped after `since` with `prefix` and all `fields`."""
    found = []
    for stamp, text in dmesg():
        if stamp <= since or not text.startswith(prefix):
            continue
        have = dict(re.findall(r"(\w+)=(\S+)", text))
        for key in ("SRC", "DST"):  # the kernel writes IPv6 addresses in full
            if key in have:
                have[key] = str(ipaddress.ip_address(have[key]))
        if all(have.get(k) == v for k, v in fields.items()):
            found.append(text)
    return found


def main(host, user, server, prefix):
    inspect = subprocess.run(["podman", "inspect", "--format", "{{json .NetworkSettings.Networks}}", host],
                             check=True, capture_output=True, text=True).stdout
    net = next(iter(json.loads(inspect).values()))
    family = ipaddress.ip_address(server).version
    src = net["IPAddress"] if family == 4 else net["GlobalIPv6Address"]
    uid = subprocess.run(["podman", "exec", host, "id", "-u", user], check=True, capture_output=True,
                         text=True).stdout.strip()
    fields = {"SRC": str(ipaddress.ip_address(src)), "DST": str(ipaddress.ip_address(server)), "PROTO": "UDP",
              "DPT": "53", "UID": uid}
    for attempt in range(1, ATTEMPTS + 1):
        lines = dmesg()
        since = lines[-1][0] if lines else 0.0
        query = subprocess.run(["podman", "exec", host, "runuser", "-u", user, "--", "dig", "+time=1", "+tries=1",
                                "@" + server, "api.openclaw.security"], capture_output=True, text=True, check=False)
        if query.returncode == 0:
            print("%s got an answer from %s as %s:\n%s" % (host, server, user, query.stdout))
            return 1
        time.sleep(0.5)
        lines = logged(since, prefix, fields)
        if lines:
            print("denied and logged (attempt %d): %s" % (attempt, lines[0]))
            return 0
        time.sleep(PAUSE)
    print("%s: no answer from %s as %s, but no LOG line with %s in %d attempts" % (host, server, user, fields, ATTEMPTS))
    return 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
