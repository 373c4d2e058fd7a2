#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: egress_learned
short_description: Read every destination the egress recorder kept, with the names that led there
version_added: 0.2.0
description:
  - Reads the recorder's sets of M(agentguard.hardening.egress_rules) with O(agentguard.hardening.egress_rules#module:learn=true)
    (read with C(ipset save)), every distinct destination (address, protocol, port) that reached the deny rules,
    exactly, by bucket (C(host), C(u<uid>) for a user recorded apart, C(fwd) for forwarded traffic),
    with its count (packets that reached the deny rules, that is connection attempts) and when it was first seen.
  - Joins each address to the names that led there, from three sources only, never a reverse lookup
    sent from the host. V(dns) is the filtering resolver's answers (C(reply NAME is ADDRESS) lines of its
    query log, O(dns_source)); V(tls) is the TLS gate's access log (the SNI and the upstream address, O(tls_log)); V(resolved) is
    this module's own resolution of O(names) through O(resolvers).
  - Reports each set's size against its bound; a set that is C(full) refused every destination after
    it filled (the rate-limited log line still samples them).
  - The playbook C(agentguard.hardening.egress_learn) turns the results of a fleet into a proposed C(egress_allow).
author:
  - agentguard.hardening developers (@agentguard)
extends_documentation_fragment:
  - agentguard.hardening.linux
  - agentguard.hardening.read_only
options:
  names:
    description: Names to resolve on the host, so their addresses are joined to them (V(resolved)).
    type: list
    elements: str
    default: []
  resolvers:
    description: The DNS servers that resolve O(names) (the policy's C(dns_servers); with filtering DNS, V(127.0.0.1)).
    type: list
    elements: str
    default: []
  dns_source:
    description:
      - Where the filtering resolver's query log is. V(journal) reads the unit O(dns_unit)'s journal,
        V(file) reads O(dns_path), V(none) reads nothing; V(auto) reads the journal when C(journalctl) exists.
    type: str
    choices: [auto, journal, file, none]
    default: auto
  dns_unit:
    description: The filtering resolver's systemd unit (role C(agentguard.hardening.egress)).
    type: str
    default: agentguard-dns.service
  dns_path:
    description: The resolver's log file, for O(dns_source=file).
    type: path
    default: /var/log/syslog
  tls_log:
    description: The TLS gate's access log; a file that does not exist is skipped.
    type: path
    default: /var/log/agentguard-tlsgate/access.log
"""

EXAMPLES = r"""
- name: Read what the recorder kept
  agentguard.hardening.egress_learned:
    names: [api.example.com]
    resolvers: [192.0.2.53]
  register: learned
"""

RETURN = r"""
now:
  description: The host's clock when the sets were read (UTC, ISO 8601).
  returned: always
  type: str
sets:
  description: Each recorder set by name, with C(family), C(bucket), C(maxelem), C(timeout), C(entries) and C(full).
  returned: always
  type: dict
entries:
  description:
    - One per recorded destination, C(address), C(protocol), C(port), C(family), C(bucket),
      C(count), C(bytes), C(first_seen), C(uid) and C(user) (for a bucket of one user, else null), and
      C(names) (name to its sources, V(dns), V(tls), V(resolved)).
  returned: always
  type: list
  elements: dict
unresolved:
  description: The O(names) that did not resolve, with the resolver's answer.
  returned: always
  type: dict
"""

import os
import pwd
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.agentguard.hardening.plugins.module_utils._learn import (
    dns_answers,
    gate_names,
    join,
    name_index,
    parse_recorder,
    resolved_names,
)
from ansible_collections.agentguard.hardening.plugins.module_utils._policy import Destination
from ansible_collections.agentguard.hardening.plugins.module_utils._resolve import ResolveError, resolve_destinations
from ansible_collections.agentguard.hardening.plugins.module_utils._tlsgate import parse_gate_log

ARGUMENT_SPEC = dict(
    names=dict(type="list", elements="str", default=[]),
    resolvers=dict(type="list", elements="str", default=[]),
    dns_source=dict(type="str", choices=["auto", "journal", "file", "none"], default="auto"),
    dns_unit=dict(type="str", default="agentguard-dns.service"),
    dns_path=dict(type="path", default="/var/log/syslog"),
    tls_log=dict(type="path", default="/var/log/agentguard-tlsgate/access.log"),
)


def _lines(path):
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return handle.read().splitlines()


def _dns_lines(module):
    source = module.params["dns_source"]
    if source == "none":
        return []
    if source == "file":
        return _lines(module.params["dns_path"])
    journalctl = module.get_bin_path("journalctl", required=source == "journal")
    if journalctl is None:
        return []
    rc, out, err = module.run_command([journalctl, "-u", module.params["dns_unit"], "-o", "cat", "--no-pager"],
                                      environ_update={"LC_ALL": "C"})
    if rc != 0:
        module.warn("cannot read the resolver's journal: %s" % err.strip())
        return []
    return out.splitlines()


def _resolve(module):
    resolved = {}
    unresolved = {}
    for name in module.params["names"]:
        dest = Destination(name, name, "name", (443,), "tcp", False, (), None, ())
        try:
            resolved.update(resolve_destinations([dest], module.params["resolvers"], ("ipv4", "ipv6")))
        except ResolveError as exc:
            unresolved[name] = str(exc)
    return resolved, unresolved


def _user(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    ipset = module.get_bin_path("ipset", required=True)
    now = int(time.time())
    rc, out, err = module.run_command([ipset, "save"], environ_update={"LC_ALL": "C"})
    if rc != 0:
        module.fail_json(msg="ipset save failed: %s" % err.strip())
    sets, entries = parse_recorder(out, now)
    if module.params["names"] and not module.params["resolvers"]:
        module.fail_json(msg="names: %s need resolvers to be resolved" % module.params["names"])
    resolved, unresolved = _resolve(module) if module.params["names"] else ({}, {})
    sources = {
        "dns": dns_answers(_dns_lines(module)),
        "tls": gate_names(parse_gate_log(_lines(module.params["tls_log"]))),
        "resolved": resolved_names(resolved),
    }
    uids = dict((e["bucket"][1:], _user(int(e["bucket"][1:]))) for e in entries if e["bucket"].startswith("u"))
    records = join(entries, name_index(sources), uids)
    module.exit_json(changed=False, now=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)), sets=sets,
                     entries=records, unresolved=unresolved)


if __name__ == "__main__":
    main()
