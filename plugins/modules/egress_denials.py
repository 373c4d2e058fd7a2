#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: egress_denials
short_description: Read the host's denied-egress log lines as structured, aggregated records
version_added: 0.1.0
description:
  - Reads the kernel log lines written by the deny rules of M(agentguard.hardening.egress_rules)
    (prefix O(prefix)) from the journal, a syslog file such as C(/var/log/kern.log), or the kernel
    ring buffer, and returns them as records aggregated by destination, port, protocol and uid,
    with counts and first/last timestamps, plus a timeline for charts.
  - Counts both log lines and attempts. A blocked TCP connection logs each retransmitted SYN, so
    one attempt is often two or more lines; an attempt is a flow (source address and port,
    destination address and port, protocol; the echo id for ICMP) whose lines are less than 120 s
    apart. Both are lower bounds, as the logging rule is rate-limited and the packets beyond its limit
    are dropped without a line. The limit is read from the live rules (RV(log_limits)).
  - The role's canary probes (after every apply, to C(egress_canary_forbidden)) bind the source port
    O(canary_source_port); their denials are marked C(canary) and counted apart (RV(canary_attempts)).
  - Denials of traffic forwarded from container or VM networks (Docker's C(docker0), podman's bridges),
    logged by the deny rules of the FORWARD path with the same prefix, are returned too, marked
    C(direction=forward) and aggregated by the container's address and network instead of a uid
    (a forwarded packet has no local owner).
  - The exact number of denied packets comes from the deny rules' kernel counters (C(iptables-save -c),
    C(ip6tables-save -c)), per family and path, in RV(counters) and RV(denied_packets), that is every packet the
    deny rules judged, logged or not. The kernel resets them when the rules are loaded again, so they count since
    RV(counters_since), not over O(since). A dropped TCP connection sends its SYN again and each is counted.
  - RV(coverage) says how far back the kernel log source reaches against the window. The kernel ring buffer of
    a busy host holds minutes, a rotated file days; a window the source does not cover is stated, never
    reported as no denial.
  - The on-host guard's tamper events (its journal entries) in the window are returned in RV(tamper_events).
  - Lines that carry the prefix but cannot be parsed, and lines of other hosts (a container host's
    ring buffer also holds its containers' lines), are skipped and counted, never fatal.
  - In filtering DNS mode, O(agentguard.hardening.egress_rules#module:dns_mode=filtering), the host runs a
    filtering resolver, dnsmasq with C(log-queries=extra) in the unit O(dns_unit). The module then also reads
    its query log and returns the names it refused (answered NXDOMAIN from its own configuration, never asked upstream) in
    RV(refused_names), since the name an attacker tried is often the most telling evidence. Allowed,
    forwarded and cached queries are not returned.
author:
  - agentguard.hardening developers (@agentguard)
extends_documentation_fragment:
  - agentguard.hardening.linux
  - agentguard.hardening.read_only
options:
  prefix:
    description: The log prefix of the deny rules, as set by O(agentguard.hardening.egress_rules#module:log_prefix).
    type: str
    default: "[EGRESS-DENIED] "
  source:
    description:
      - Where to read. V(auto) tries the journal, then O(path), then the kernel ring buffer,
        and uses the first that holds at least one line with the prefix; it warns when none of them can be read.
      - A source named here that cannot be read fails the module, the message saying why.
      - V(journal) reads C(journalctl -k -o json); V(file) reads O(path); V(dmesg) reads the kernel
        ring buffer (C(dmesg --time-format iso)), which only holds recent lines.
    type: str
    choices: [auto, journal, file, dmesg]
    default: auto
  path:
    description: The syslog file holding kernel messages, for O(source=file) and O(source=auto).
    type: path
    default: /var/log/kern.log
  since:
    description:
      - Only records at or after this time, as ISO 8601 (C(2026-11-25T10:00:00Z), C(2026-11-25)) or a
        duration back from now (C(30m), C(24h), C(7d)).
    type: str
  local_only:
    description:
      - Keep only records this host logged, that is a local denial whose source address is one of this host's
        addresses, a forwarded denial that came in on one of this host's interfaces. Leave it on, since
        on a container host the kernel log also holds the lines the containers' own rules logged.
    type: bool
    default: true
  bucket_seconds:
    description: Width of the timeline's buckets, in seconds.
    type: int
    default: 300
  max_records:
    description: How many of the newest raw records to return in RV(records) (the aggregates count all).
    type: int
    default: 200
  canary_source_port:
    description:
      - The source port the role's canary probes bind (role C(agentguard.hardening.egress), the probes of
        C(egress_canary_forbidden)). A local denial from this port is marked C(canary) and counted apart.
        V(0) marks none.
      - A process that binds this port on purpose is reported as the canary; its denials are still listed.
    type: int
    default: 30999
  dns_source:
    description:
      - Where to read the filtering resolver's query log (dnsmasq, C(log-queries=extra) or C(log-queries)).
      - V(auto) reads the journal of O(dns_unit) when that unit exists or has journal entries, and
        nothing otherwise (hosts in pinned DNS mode). V(journal) reads C(journalctl -u) O(dns_unit);
        V(file) reads O(dns_path), a syslog file or dnsmasq's own C(log-facility) file; V(none) skips it.
      - Only lines of the program C(dnsmasq) are read; other programs' lines are counted as foreign.
    type: str
    choices: [auto, journal, file, none]
    default: auto
  dns_unit:
    description: The systemd unit of the filtering resolver, for O(dns_source=journal) and O(dns_source=auto).
    type: str
    default: agentguard-dns.service
  dns_path:
    description:
      - The file holding the resolver's log lines, for O(dns_source=file). On hosts with rsyslog,
        C(/var/log/syslog) (Debian 12) or C(/var/log/daemon.log) (Debian 11).
      - Traditional timestamps without a zone (C(Nov 25 07:23:59)) are read as UTC.
    type: path
    default: /var/log/syslog
  dns_max_names:
    description:
      - How many aggregated refused names to return in RV(refused_names), busiest first
        (RV(refused_total) and RV(refused_distinct) count all). A DNS tunnel makes a new name per query.
    type: int
    default: 200
  tls_log:
    description:
      - The TLS gate's access log (role C(agentguard.hardening.egress) with C(egress_tls_gate) on), one
        C(key=value) line per connection. A missing file means no gate on this host (RV(tls_source) V(none));
        an unreadable one fails the module. An empty value skips it.
    type: path
    default: /var/log/agentguard-tlsgate/access.log
  tls_prefix:
    description:
      - The log prefix of the gate's redirect rules (O(agentguard.hardening.egress_rules#module:tls_gate)). Their
        kernel lines give each refusal its sender (uid, or container address and network) and the
        destination the client asked for, joined on the client's address and port.
    type: str
    default: "[EGRESS-TLS] "
  tls_max_refusals:
    description: How many aggregated gate refusals to return in RV(tls_refusals), busiest first.
    type: int
    default: 200
  guard_status:
    description:
      - The status file of the on-host guard (C(agentguard-guard.service), role variable C(egress_guard)), read for
        its totals (RV(guard)) and for when the rules were last loaded (RV(counters_since)). A missing or unreadable
        file means no guard figures, never a failure. An empty value skips it.
      - The guard's tamper events themselves are read from the journal (C(SYSLOG_IDENTIFIER=agentguard-guard)).
    type: path
    default: /var/lib/agentguard/guard/status.json
"""

EXAMPLES = r"""
- name: Denied egress of the last day
  agentguard.hardening.egress_denials:
    since: 24h
  register: denials

- name: Show who tried to reach what
  ansible.builtin.debug:
    msg: "{{ item.count }} x {{ item.sender_text }} -> {{ item.destination_text }}/{{ item.protocol }}"
  loop: "{{ denials.denials }}"
"""

RETURN = r"""
denials:
  description:
    - Aggregated records, busiest first. A local denial (C(direction=output)) is grouped by C(dst),
      C(dpt), C(protocol) and C(uid); a forwarded one (C(direction=forward)) by C(source), C(network),
      C(dst), C(dpt) and C(protocol).
    - C(uid) is null for packets the kernel logged without an owner (not sent by a local process) and
      always for forwarded ones; C(user) is the uid's name on this host, when it has one.
    - C(direction) is V(output) (sent by this host) or V(forward) (routed through it from a container or
      VM network). C(source) is the sending container's address and C(network) the interface it came
      in on (the C(IN=) of the line, such as V(docker0)); both are null for local denials.
    - C(destination_text) is the destination as it is written, C(198.18.0.66:443), C([fd00::66]:443), or
      the bare address when there is no port (ICMP). C(sender_text) says who sent it, the user and uid of
      a local denial ("agent (1000)", "(no owner)"), C(container <source> on <network>) for a forwarded one.
    - C(sources) lists the source addresses seen in the group.
    - C(count) is the group's log lines, C(attempts) its attempts (see the description). C(canary) is
      true for the role's own canary probes (O(canary_source_port)); their groups come last.
  returned: always
  type: list
  elements: dict
  sample:
    - {dst: 198.18.0.66, dpt: 443, protocol: tcp, uid: 1000, user: agent, family: ipv4, count: 12, attempts: 5,
       canary: false,
       first: "2026-11-25T05:04:19.534774Z", last: "2026-11-25T05:09:02.100000Z", sources: [198.18.0.20],
       direction: output, source: null, network: null, destination_text: "198.18.0.66:443",
       sender_text: agent (1000)}
    - {dst: "fd00:d0f::1", dpt: 443, protocol: tcp, uid: null, user: null, family: ipv6, count: 2, attempts: 1,
       canary: false,
       first: "2026-11-29T23:37:59.219443Z", last: "2026-11-29T23:38:02.081205Z", sources: ["fd00:d0e::2"],
       direction: forward, source: "fd00:d0e::2", network: docker0, destination_text: "[fd00:d0f::1]:443",
       sender_text: "container fd00:d0e::2 on docker0"}
records:
  description:
    - The newest raw records (at most O(max_records)), oldest first.
    - Each has C(time), C(family), C(src), C(dst), C(protocol), C(dpt) (null without a port), C(spt), C(uid)
      and C(gid) (when logged), C(out) (the interface it was to leave by), C(flags) (such as V(SYN)),
      C(destination_text), and C(direction), C(source), C(network) as in RV(denials).
    - C(attempt) is true on the first line of an attempt, false on a retransmission; C(canary) as in
      RV(denials); C(icmp_id) is the echo id of an ICMP line, null otherwise.
    - C(physin) is the bridge port a forwarded packet came in by (the container's veth, the C(PHYSIN=) of
      hosts with br_netfilter), null otherwise; it is not part of the grouping.
  returned: always
  type: list
  elements: dict
  sample:
    - {time: "2026-11-29T23:38:01.711216Z", family: ipv4, src: 198.18.210.2, dst: 198.18.211.1, protocol: tcp,
       dpt: 443, spt: 50124, uid: null, out: eth0, flags: [DF, SYN], direction: forward, source: 198.18.210.2,
       network: docker0, physin: vethd0e2, destination_text: "198.18.211.1:443", len: 60, icmp_id: null,
       attempt: true, canary: false}
timeline:
  description:
    - The O(bucket_seconds) buckets that hold denials, in time order; empty buckets are left out, so
      place each by its C(start) (the report's chart does).
    - C(count) is log lines, C(attempts) attempts other than the canary's, C(canary) the canary's attempts.
  returned: always
  type: list
  elements: dict
  sample: [{start: "2026-11-25T05:00:00Z", count: 7, attempts: 3, canary: 0}]
window:
  description: The time window read, C(start) (from O(since); null without it) and C(end) (now), and O(bucket_seconds).
  returned: always
  type: dict
  sample: {start: "2026-11-24T05:00:00Z", end: "2026-11-25T05:00:00Z", bucket_seconds: 300}
total:
  description: Number of denied-egress log lines found (after filtering), local and forwarded, the canary's included.
  returned: always
  type: int
attempts:
  description: Number of attempts among them (see the description), the canary's excluded.
  returned: always
  type: int
forwarded_total:
  description: How many of RV(total) were forwarded from container or VM networks.
  returned: always
  type: int
forwarded_attempts:
  description: How many of RV(attempts) were forwarded from container or VM networks.
  returned: always
  type: int
canary_total:
  description: How many of RV(total) the role's canary probes logged.
  returned: always
  type: int
canary_attempts:
  description: The canary's attempts (not in RV(attempts)).
  returned: always
  type: int
log_limits:
  description:
    - The logging rules with O(prefix) in the live rules (C(iptables-save), C(ip6tables-save)), with their
      rate limit (C(limit) null when the rule has none). Empty when they cannot be read.
  returned: always
  type: list
  elements: dict
  sample:
    - {family: ipv4, table: filter, chain: AGENTGUARD-DENY, limit: 10/min, burst: 20}
log_limit_text:
  description: The rate limits of RV(log_limits) in one line (V(10/min, burst 20)); null when unknown.
  returned: always
  type: str
source:
  description: Where the lines were read (V(journal), the file's path, V(dmesg), or V(none)).
  returned: always
  type: str
stats:
  description: Lines read, matched, and the ones not returned and why (malformed, other_hosts, older, no_time).
  returned: always
  type: dict
  sample: {lines: 40, matched: 12, malformed: 0, other_hosts: 3, older: 25, no_time: 0}
refused_names:
  description:
    - Names the filtering resolver refused, aggregated by name, query type and client, busiest first
      (at most O(dns_max_names)). C(qtype) is as dnsmasq names it (V(A), V(AAAA), V(TXT), V(HTTPS); dnsmasq
      2.85 writes unknown types as C(type=65), read here as V(HTTPS)); null when the query's own line was
      not read (outside the window). C(client) is the address that asked, on this host usually
      V(127.0.0.1) or V(::1); the resolver log has no uid.
    - The names are the attacker's data, so escape them before showing them anywhere.
  returned: always
  type: list
  elements: dict
  sample:
    - {name: exfil.attacker.test, qtype: TXT, client: 127.0.0.1, count: 3,
       first: "2026-11-25T07:25:01.583888Z", last: "2026-11-25T07:29:12.004120Z"}
refused_total:
  description: Number of refused queries found (after filtering).
  returned: always
  type: int
refused_distinct:
  description: Number of distinct (name, query type, client) groups before O(dns_max_names) applied.
  returned: always
  type: int
dns_source:
  description: Where the resolver's lines were read (V(journal), the file's path, or V(none)).
  returned: always
  type: str
dns_stats:
  description:
    - Resolver log lines read, queries seen, refused queries returned, and the lines not used and why
      (malformed, foreign (other programs), older, no_time).
  returned: always
  type: dict
  sample: {lines: 67, queries: 24, refused: 16, malformed: 0, foreign: 4, older: 0, no_time: 0}
tls_refusals:
  description:
    - The TLS gate's refusals in the window, and in audit mode the names it would have refused, grouped by
      C(sni) (the server name the client sent; empty for none), C(reason) (V(no-sni), V(ip-literal),
      V(not-allowed), V(not-tls), V(not-resolved), V(would-refuse-sni)), the sender and the original
      destination; busiest first, at most O(tls_max_refusals).
    - C(uid) and C(user) (a local process), or C(source) and C(network) (a container), and C(dst), C(dpt),
      C(destination_text) come from the redirect rule's kernel line; they are null when that line is missing
      (rate-limited, or rotated out of the kernel log), and C(sender_text) then says so. C(passed) counts the
      connections of the group the gate let through (audit).
  returned: always
  type: list
  elements: dict
  sample:
    - {sni: cotenant.cdn.example, reason: not-allowed, count: 3, passed: 0, uid: 1000, user: agent, source: null,
       network: null, direction: output, dst: 198.51.100.7, dpt: 443, destination_text: "198.51.100.7:443",
       sender_text: agent (1000), first: "2026-11-30T03:00:01Z", last: "2026-11-30T03:05:12Z"}
tls_refused_total:
  description: Connections the gate refused in the window (all of them, not only the groups returned).
  returned: always
  type: int
tls_would_refuse_total:
  description: Connections the gate let through in audit mode that enforce would refuse.
  returned: always
  type: int
tls_source:
  description: The gate's log that was read, or V(none) (no gate on this host, or O(tls_log) empty).
  returned: always
  type: str
tls_stats:
  description: The gate log's lines, its connections in the window, and how many refusals had no kernel line.
  returned: always
  type: dict
  sample: {lines: 120, connections: 118, unlogged: 0}
coverage:
  description:
    - How far back the kernel log source reaches. C(source) as RV(source); C(oldest), the time of its oldest
      line (for the journal, of the lines read); C(start), the window's start (null without O(since)); C(covered),
      whether the source holds lines from before the start (the whole window is read); C(text), one sentence
      for the report, such as C(dmesg covers only the last 12 min of the 24 h asked (its oldest line ...)); C(short),
      the same in a few words for a table (V(whole window), V(last 12 min of 24 h), V(none)).
    - The journal is asked for one kernel line before the start; C(journalctl -k) reads the current boot only,
      so a host that booted inside the window is never covered, and the text says so.
  returned: always
  type: dict
  sample: {source: dmesg, oldest: "2026-11-25T11:48:02.113201Z", start: "2026-11-24T12:00:00Z", covered: false,
           text: "dmesg covers only the last 12 min of the 24 h asked (its oldest line: 2026-11-25T11:48:02.113201Z)",
           short: last 12 min of 24 h}
counters:
  description:
    - The exact denied packets and bytes per family and path (C(output), sent by this host; C(forward), from a
      container or VM network), read from the deny rules' kernel counters; a family or path whose rules are not
      loaded is left out. In audit mode, what would have been denied.
  returned: always
  type: dict
  sample: {ipv4: {output: {packets: 12, bytes: 720}, forward: {packets: 5, bytes: 300}}, ipv6: {output: {packets: 9, bytes: 720}}}
denied_packets:
  description: The sum of RV(counters), null when no counter could be read.
  returned: always
  type: int
denied_packets_forwarded:
  description: The forward path's part of RV(denied_packets), null without a forward path.
  returned: always
  type: int
counters_mode:
  description: V(enforce), V(audit) (the counters count what would be denied), V(mixed), or null.
  returned: always
  type: str
counters_since:
  description:
    - When the rules were last loaded, as far as this host can tell, the latest of the boot, the last apply that
      changed the policy and the guard's last restore (RV(counters_since_reason) says which). Another reload
      (an apply that repaired drift, a hand-made change) resets the counters too, so this is the earliest
      time they may count from. Null when unknown.
  returned: always
  type: str
counters_since_reason:
  description: Which load RV(counters_since) is (V(boot), the last apply, the guard's last restore), or null.
  returned: always
  type: str
counters_errors:
  description: Why a family's counters could not be read, one line per family (C(ipv6) and the reason).
  returned: always
  type: list
  elements: str
counters_text:
  description: One sentence for the report, the total and since when.
  returned: always
  type: str
tamper_events:
  description:
    - The guard's tamper events in the window (its journal entries, oldest first, at most O(max_records)).
      C(time); C(differed), what differed (V(ipv4/filter/jump), ...) and C(differed_text); C(families),
      C(tables), C(kinds); C(restore_seconds), from the change seen to the rules back; C(open_seconds), from the
      kernel's first change event to the rules back (null when the periodic check found it); C(restored), false
      when the restore failed; C(open_text), how long the policy was open, in words; C(message).
  returned: always
  type: list
  elements: dict
  sample:
    - {time: "2026-12-06T20:30:01.250000Z", differed: [ipv4/filter/jump], differed_text: ipv4/filter/jump,
       families: [ipv4], tables: [filter], kinds: [jump], restore_seconds: 0.18, open_seconds: 0.41,
       restored: true, open_text: "0.41 s", message: "egress rules restored (ipv4/filter/jump) in 0.180 s"}
tamper_total:
  description: How many tamper events the window holds (all of them, not only those returned).
  returned: always
  type: int
tamper_source:
  description: Where the events were read, V(journal) or V(none) (no journal on this host).
  returned: always
  type: str
guard:
  description:
    - The guard's status file (O(guard_status)), null without one. C(started), C(last_restore), C(applied) as
      times; C(tamper_events_total) and C(restore_failures_total) since the file was created; C(tamper_events), its
      counts by C(kind), C(family) and C(table); C(last_restore_seconds), C(last_open_seconds), C(policy_hash),
      C(in_sync).
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.agentguard.hardening.plugins.module_utils._hostio import module_host
from ansible_collections.agentguard.hardening.plugins.module_utils._log_sources import Failure, denials_result

ARGUMENT_SPEC = dict(
    prefix=dict(type="str", default="[EGRESS-DENIED] "),
    source=dict(type="str", choices=["auto", "journal", "file", "dmesg"], default="auto"),
    path=dict(type="path", default="/var/log/kern.log"),
    since=dict(type="str"),
    local_only=dict(type="bool", default=True),
    bucket_seconds=dict(type="int", default=300),
    max_records=dict(type="int", default=200),
    dns_source=dict(type="str", choices=["auto", "journal", "file", "none"], default="auto"),
    dns_unit=dict(type="str", default="agentguard-dns.service"),
    dns_path=dict(type="path", default="/var/log/syslog"),
    dns_max_names=dict(type="int", default=200),
    canary_source_port=dict(type="int", default=30999),
    tls_log=dict(type="path", default="/var/log/agentguard-tlsgate/access.log"),
    tls_prefix=dict(type="str", default="[EGRESS-TLS] "),
    tls_max_refusals=dict(type="int", default=200),
    guard_status=dict(type="path", default="/var/lib/agentguard/guard/status.json"),
)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    try:
        result = denials_result(module_host(module), module.params)
    except Failure as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
