# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Learn the allowlist: read the recorder's sets, join addresses to names, propose egress_allow.

Private to agentguard.hardening. The recorder (egress_rules learn=true, _render.learn_sets) keeps
every distinct would-be-denied destination in hash:ip,port sets with counters:
  ag4-_learn / ag6-_learn           the host's processes not recorded apart
  ag4-_learn-u<uid>                 one restricted or learn_users user
  ag4-_learn-fwd                    forwarded from scope_networks
Names come only from what led to an address (the filtering resolver's answers, the TLS gate's
SNI, this module's own resolution of names it was given); never from a reverse lookup.
Text in, data out: the module and the filter do the reading and writing.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import ipaddress
import json
import re

LEARN_SET_RE = re.compile(r"^ag([46])-_learn(?:-(u\d+|fwd))?$")
MEMBER_RE = re.compile(r"^(?P<addr>[0-9A-Fa-f.:]+),(?P<proto>[a-z0-9-]+):(?P<port>\S+)$")
# dnsmasq (log-queries) answers: "reply api.test is 198.18.0.20", also "cached ..." and "config ..."
# (an answer of its own configuration: a hosts entry of the lab's resolver, say).
DNS_ANSWER_RE = re.compile(r"\b(?:reply|cached|config) (\S+) is ([0-9A-Fa-f.:]+)$")

# What a proposal never includes unless its category is accepted by name (accept_withheld).
WITHHELD_PORTS = {
    "dns": {("udp", 53), ("tcp", 53), ("tcp", 853), ("udp", 853)},
    "smtp": {("tcp", 25), ("tcp", 465), ("tcp", 587)},
}
METADATA = ("169.254.169.254", "fd00:ec2::254")
LINK_LOCAL = (ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fe80::/10"))
SYSTEM_UID_MAX = 999
LABEL_MAX = 26


def _iso(epoch):
    return datetime.datetime.fromtimestamp(int(epoch), tz=datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_recorder(text, now):
    """(sets, entries) from `ipset save` text, at the epoch second `now`.

    sets: {name: {family, bucket, maxelem, timeout, entries, full}}; entries: one per member,
    {set, family, bucket, address, protocol, port, count, bytes, first_seen} where first_seen is
    when the entry was added (its timeout runs from the first packet: timeout - remaining seconds ago).
    """
    sets = {}
    entries = []
    for raw in text.splitlines():
        words = raw.split()
        if len(words) < 3 or words[0] not in ("create", "add"):
            continue
        match = LEARN_SET_RE.match(words[1])
        if not match:
            continue
        if words[0] == "create":
            opts = dict(zip(words[3::2], words[4::2]))
            sets[words[1]] = {
                "family": "ipv%s" % match.group(1), "bucket": match.group(2) or "host", "type": words[2],
                "maxelem": int(opts.get("maxelem", 65536)), "timeout": int(opts.get("timeout", 0)),
                "counters": "counters" in words, "entries": 0, "full": False,
            }
            continue
        info = sets.get(words[1])
        member = MEMBER_RE.match(words[2])
        if info is None or member is None:
            continue
        extra = dict(zip(words[3::2], words[4::2]))
        port = member.group("port")
        remaining = int(extra.get("timeout", info["timeout"]))
        info["entries"] += 1
        entries.append({
            "set": words[1], "family": info["family"], "bucket": info["bucket"],
            "address": str(ipaddress.ip_address(member.group("addr"))), "protocol": member.group("proto"),
            "port": int(port) if port.isdigit() else port,
            "count": int(extra.get("packets", 1)), "bytes": int(extra.get("bytes", 0)),
            "first_seen": _iso(now - max(info["timeout"] - remaining, 0)),
        })
    for info in sets.values():
        info["full"] = info["entries"] >= info["maxelem"]
    entries.sort(key=lambda e: (e["set"], e["address"], e["protocol"], str(e["port"])))
    return sets, entries


def dns_answers(lines):
    """[(name, address)] from a dnsmasq query log (log-queries), in order, names lower-cased."""
    result = []
    for line in lines:
        match = DNS_ANSWER_RE.search(line.rstrip())
        if not match:
            continue
        try:
            address = str(ipaddress.ip_address(match.group(2)))
        except ValueError:
            continue
        result.append((match.group(1).rstrip(".").lower(), address))
    return result


def gate_names(records):
    """[(sni, upstream address)] from the TLS gate's log records (_tlsgate.parse_gate_log)."""
    result = []
    for record in records:
        sni, upstream = record.get("sni") or "", record.get("upstream") or ""
        if not sni or sni == "-" or not upstream:
            continue
        address = upstream.rsplit(":", 1)[0].strip("[]")
        try:
            result.append((sni.rstrip(".").lower(), str(ipaddress.ip_address(address))))
        except ValueError:
            continue
    return result


def resolved_names(resolved):
    """[(name, address)] from {name: {"ipv4": [...], "ipv6": [...]}} (this module's own resolution)."""
    return [(name.lower(), str(ipaddress.ip_network(a, strict=False).network_address))
            for name in sorted(resolved) for family in ("ipv4", "ipv6") for a in resolved[name].get(family, [])]


def name_index(sources):
    """{address: {name: [source, ...]}} from {source: [(name, address), ...]}."""
    index = {}
    for source in sorted(sources):
        for name, address in sources[source]:
            found = index.setdefault(address, {}).setdefault(name, [])
            if source not in found:
                found.append(source)
    return index


def join(entries, names, uids):
    """The recorded entries with their names ({name: sources}) and user (name or None)."""
    result = []
    for entry in entries:
        item = dict(entry)
        item["names"] = names.get(entry["address"], {})
        bucket = entry["bucket"]
        if bucket.startswith("u"):
            uid = int(bucket[1:])
            item["uid"] = uid
            item["user"] = uids.get(str(uid), uids.get(uid, str(uid)))
        else:
            item["uid"] = None
            item["user"] = None
        result.append(item)
    return result


def withheld_reason(protocol, port, address, dns_servers=()):
    """Why a destination is never proposed without a flag, or None."""
    if address in METADATA:
        return "metadata"
    if (protocol, port) in WITHHELD_PORTS["dns"]:
        return "trusted-dns" if address in dns_servers and port == 53 else "dns"
    if (protocol, port) in WITHHELD_PORTS["smtp"]:
        return "smtp"
    net = ipaddress.ip_address(address)
    if any(net in link for link in LINK_LOCAL):
        return "link-local"
    return None


def _label(text, used):
    base = re.sub(r"[^A-Za-z0-9_.-]", "-", text).strip("-.") or "dest"
    base = base[:LABEL_MAX]
    label = base
    number = 2
    while label in used:
        suffix = "-%d" % number
        label = base[:LABEL_MAX - len(suffix)] + suffix
        number += 1
    used.add(label)
    return label


def _parent(name):
    parts = name.split(".")
    return ".".join(parts[1:]) if len(parts) > 2 else None


def _seen(items):
    hosts = sorted(set(i["host"] for i in items))
    return {"count": sum(i["count"] for i in items), "first_seen": min(i["first_seen"] for i in items), "hosts": hosts}


def propose(records, current_allow=(), dns_servers=(), dns_mode="pinned", accept=(), accept_withheld=(),
            system_uid_max=SYSTEM_UID_MAX):
    """The proposal from joined records of every host (join() items with "host" added).

    Returns {allow, flagged, withheld, forwarded_only}: allow is egress_allow entries (named ones,
    plus the nameless ones in `accept`, addresses or CIDRs), each with "seen" (count, first_seen,
    hosts); flagged: nameless destinations left out; withheld: destinations of a category that is
    never proposed unless named in accept_withheld (dns, smtp, metadata, link-local).
    """
    accept = [ipaddress.ip_network(a, strict=False) for a in accept]
    groups = {}
    flagged = {}
    withheld = []
    for item in records:
        reason = withheld_reason(item["protocol"], item["port"], item["address"], dns_servers)
        if reason == "trusted-dns":
            continue  # the policy's dns_servers: allowed in every mode already
        if reason and reason not in accept_withheld:
            withheld.append(dict(item, reason=reason))
            continue
        if item["protocol"] not in ("tcp", "udp"):
            withheld.append(dict(item, reason="protocol"))
            continue
        names = sorted(item["names"])
        if names:
            # One record can carry several names (a CDN address): each name is a way there.
            for name in names:
                groups.setdefault(("name", name, item["protocol"]), []).append(item)
            continue
        address = ipaddress.ip_address(item["address"])
        if any(address in network for network in accept):
            groups.setdefault(("address", item["address"], item["protocol"]), []).append(item)
        else:
            flagged.setdefault((item["address"], item["protocol"]), []).append(item)
    # Several labels under one parent name: one entry with subdomains (filtering mode only, where
    # the role can honour it; pinned mode lists each name).
    if dns_mode == "filtering":
        parents = {}
        for kind, name, protocol in groups:
            if kind == "name" and _parent(name):
                parents.setdefault((_parent(name), protocol), []).append(name)
        for (parent, protocol), children in parents.items():
            if len(children) > 1:
                merged = []
                for child in children:
                    merged.extend(groups.pop(("name", child, protocol)))
                groups[("subdomains", parent, protocol)] = merged
    used = set(entry.get("name") for entry in current_allow)
    allow = []
    for (kind, host, protocol) in sorted(groups):
        items = groups[(kind, host, protocol)]
        entry = {"name": _label(host if kind != "address" else "addr-" + host, used), "host": host,
                 "ports": sorted(set(i["port"] for i in items))}
        if protocol != "tcp":
            entry["protocol"] = protocol
        if kind == "subdomains":
            entry["subdomains"] = True
        if kind == "address":
            entry["flag"] = "nameless: accepted by address"
        users = set(i["user"] for i in items)
        if None not in users and all(i["uid"] <= system_uid_max for i in items):
            entry["users"] = sorted(users)
        forwarded = all(i["bucket"] == "fwd" for i in items)
        if forwarded:
            entry["forwarded_only"] = True
        entry["seen"] = _seen(items)
        allow.append(entry)
    flagged_list = []
    for (address, protocol) in sorted(flagged):
        items = flagged[(address, protocol)]
        flagged_list.append({"host": address, "protocol": protocol, "ports": sorted(set(i["port"] for i in items)),
                             "reason": "nameless: no resolver answer, TLS SNI or resolved name led here",
                             "users": sorted(set(i["user"] for i in items if i["user"])), "seen": _seen(items)})
    withheld_list = []
    for item in sorted(withheld, key=lambda i: (i["reason"], i["address"], str(i["port"]))):
        withheld_list.append({"host": item["address"], "protocol": item["protocol"], "port": item["port"],
                              "reason": item["reason"], "names": sorted(item["names"]),
                              "seen": _seen([item])})
    return {"allow": allow, "flagged": flagged_list, "withheld": withheld_list}


def _policy_entry(entry):
    return dict((k, v) for k, v in entry.items() if k not in ("seen", "flag", "forwarded_only"))


def _listed(entry):
    """Whether an egress_allow entry's host is a list of addresses."""
    return isinstance(entry.get("host"), (list, tuple))


def _hosts_of(entry):
    """The lower-cased host texts of an egress_allow entry: its host, or each address of a list."""
    return [str(h).lower() for h in (entry["host"] if _listed(entry) else [entry.get("host", "")])]


def _allowed_ports(current_allow):
    """{(host, protocol): set(ports)} of egress_allow, a list's addresses each on the entry's ports."""
    current = {}
    for entry in current_allow:
        for host in _hosts_of(entry):
            current.setdefault((host, entry.get("protocol", "tcp")), set()).update(entry.get("ports", [443]))
    return current


def diff_host(current_allow, proposal_allow, host):
    """What the proposal adds for one host: entries (or ports) its current egress_allow lacks."""
    current = _allowed_ports(current_allow)
    added = []
    for entry in proposal_allow:
        if host not in entry["seen"]["hosts"]:
            continue
        have = current.get((entry["host"], entry.get("protocol", "tcp")), set())
        ports = [p for p in entry["ports"] if p not in have]
        if ports:
            added.append({"host": entry["host"], "protocol": entry.get("protocol", "tcp"), "ports": ports,
                          "new_entry": not have})
    return added


def merged_allow(current_allow, proposal_allow):
    """The egress_allow to apply: the current entries (unchanged) and the proposed ones they lack.

    A missing port of a host named alone is added to its entry; one of an address in a list is not (it would open
    the port to every address of the list): the proposed entry is added with only the ports the list lacks."""
    result = [dict(e) for e in current_allow]
    index = dict(((_hosts_of(e)[0], e.get("protocol", "tcp")), e) for e in result if not _listed(e))
    listed = _allowed_ports(e for e in current_allow if _listed(e))
    for entry in proposal_allow:
        key = (entry["host"], entry.get("protocol", "tcp"))
        have = index.get(key)
        if have is None:
            ports = [p for p in entry["ports"] if p not in listed.get(key, set())]
            if ports:
                result.append(dict(_policy_entry(entry), ports=ports))
            continue
        ports = list(have.get("ports", [443]))
        ports.extend(p for p in entry["ports"] if p not in ports)
        have["ports"] = ports
    return result


def _scalar(value):
    return json.dumps(value)


def render_yaml(allow, proposal, generated, hosts):
    """group_vars text: egress_allow with a comment per entry (counts, first seen, hosts, flags), then
    the flagged and withheld destinations as comments (never applied as they stand)."""
    proposed = dict((e["host"], e) for e in proposal["allow"])
    lines = ["---", "# Proposed by agentguard.hardening.egress_learn at %s from %s." % (generated, ", ".join(hosts)),
             "# Entries without a 'seen' comment were already in egress_allow (the recorder only sees denials).",
             "egress_allow:"]
    for entry in allow:
        seen = None if _listed(entry) else proposed.get(entry.get("host"))
        if seen is not None:
            stats = seen["seen"]
            note = "seen %d times, first %s on %s" % (stats["count"], stats["first_seen"], ", ".join(stats["hosts"]))
            if seen.get("flag"):
                note += "; FLAGGED " + seen["flag"]
            if seen.get("forwarded_only"):
                note += "; only from container networks"
            lines.append("  # " + note)
        first = True
        for key in ("name", "host", "ports", "protocol", "subdomains", "users", "tls"):
            if key not in entry:
                continue
            lines.append("%s%s: %s" % ("  - " if first else "    ", key, _scalar(entry[key])))
            first = False
    if not allow:
        lines[-1] = "egress_allow: []"
    if proposal["flagged"]:
        lines.append("# FLAGGED, left out: nameless destinations (accept them with egress_learn_accept: [ADDRESS]):")
        for f in proposal["flagged"]:
            lines.append("#   %s %s %s (seen %d times, first %s)"
                         % (f["host"], f["protocol"], f["ports"], f["seen"]["count"], f["seen"]["first_seen"]))
    if proposal["withheld"]:
        lines.append("# WITHHELD, never proposed unless accepted (egress_learn_accept_withheld: [dns, smtp, metadata, link-local]):")
        lines.extend("#   %s %s:%s %s (%s)" % (w["host"], w["protocol"], w["port"], w["reason"], ", ".join(w["names"]) or "no name")
                     for w in proposal["withheld"])
    return "\n".join(lines) + "\n"


def render_markdown(proposal, diffs, sets_status, generated):
    lines = ["# Proposed egress policy", "", "Generated %s by agentguard.hardening.egress_learn." % generated, "",
             "## Proposed entries", "", "| name | host | protocol | ports | users | seen | first seen | hosts | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for e in proposal["allow"]:
        note = e.get("flag", "") + ("; only from container networks" if e.get("forwarded_only") else "")
        lines.append("| %s | %s | %s | %s | %s | %d | %s | %s | %s |" % (
            e["name"], e["host"], e.get("protocol", "tcp"), ", ".join(str(p) for p in e["ports"]),
            ", ".join(e.get("users", [])), e["seen"]["count"], e["seen"]["first_seen"], ", ".join(e["seen"]["hosts"]), note))
    lines += ["", "## Flagged (nameless, left out)", ""]
    flagged = ["- %s %s %s: seen %d times, first %s, users %s"
               % (f["host"], f["protocol"], f["ports"], f["seen"]["count"], f["seen"]["first_seen"], ", ".join(f["users"]) or "-")
               for f in proposal["flagged"]]
    lines += flagged or ["none"]
    lines += ["", "## Withheld (never proposed without a flag)", ""]
    lines += ["- %s %s:%s (%s) names: %s" % (w["host"], w["protocol"], w["port"], w["reason"], ", ".join(w["names"]) or "-")
              for w in proposal["withheld"]] or ["none"]
    lines += ["", "## Changes against each host's current egress_allow", ""]
    for host in sorted(diffs):
        changes = diffs[host]
        text = "; ".join("%s %s %s%s" % (c["host"], c["protocol"], c["ports"], " (new entry)" if c["new_entry"] else "")
                         for c in changes)
        lines.append("- %s: %s" % (host, text or "no change"))
    lines += ["", "## Recorder sets", ""]
    for host in sorted(sets_status):
        for name, info in sorted(sets_status[host].items()):
            full = " FULL: later destinations were not recorded" if info["full"] else ""
            lines.append("- %s %s: %d of %d entries%s" % (host, name, info["entries"], info["maxelem"], full))
    lines += ["", "Counts are packets that reached the deny rules (connection attempts: established traffic never does); "
              "first seen is exact, last seen is not recorded (an ipset add that refreshed it would reset the count)."]
    return "\n".join(lines) + "\n"
