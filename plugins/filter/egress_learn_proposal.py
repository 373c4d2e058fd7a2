# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: egress_learn_proposal
short_description: Turn what the egress recorder kept on a fleet into a proposed egress_allow
version_added: 0.2.0
description:
  - Takes, per host, the result of M(agentguard.hardening.egress_learned) and the host's current policy,
    and proposes one C(egress_allow) for them all. A destination is proposed by name wherever a name led to it
    (the resolver's answers, the TLS gate's SNI, the module's own resolution); C(subdomains) only in filtering DNS mode and only
    where several names under one parent were seen; C(users) only where every packet came from users
    recorded apart whose uids are at most O(system_uid_max) (a system service's user).
  - A destination no name led to is flagged and left out, unless its address is in O(accept) (then an
    address entry, marked). DNS to other resolvers (53, 853), SMTP (25, 465, 587), cloud metadata
    (169.254.169.254, fd00:ec2::254) and other link-local addresses, and protocols other than TCP and UDP are withheld
    unless their category is in O(accept_withheld).
  - The result holds the proposal, the merged C(egress_allow) (the current entries unchanged, the new
    ones added), a diff per host, the role's own validation of the merged policy (C(errors), empty when valid), and the
    text of a group_vars YAML file and a Markdown summary.
author:
  - agentguard.hardening developers (@agentguard)
positional: accept, accept_withheld
options:
  _input:
    description:
      - Per host, a dictionary with C(learned) (the registered result of M(agentguard.hardening.egress_learned)),
        C(allow) (its current C(egress_allow)), C(dns_servers) and C(dns_mode).
    type: dict
    required: true
  accept:
    description: Addresses or CIDRs of nameless destinations to propose anyway.
    type: list
    elements: str
    default: []
  accept_withheld:
    description: Categories to propose anyway, of V(dns), V(smtp), V(metadata), V(link-local), V(protocol).
    type: list
    elements: str
    default: []
  system_uid_max:
    description: The highest uid of a system user (an entry gets C(users) only when every packet came from such users).
    type: int
    default: 999
  generated:
    description: The time to write into the files (UTC, ISO 8601).
    type: str
    default: ""
"""

EXAMPLES = r"""
- name: Propose a policy from the hosts' recordings
  ansible.builtin.set_fact:
    proposal: "{{ per_host | agentguard.hardening.egress_learn_proposal(['198.51.100.7']) }}"
"""

RETURN = r"""
_value:
  description:
    - C(proposal) (C(allow), C(flagged), C(withheld)), C(allow) (the merged egress_allow), C(diffs) (host to
      the entries or ports it lacks), C(sets) (host to its recorder sets), C(errors) (the role's validation of
      the merged policy), C(unread) (hosts without a result), C(yaml) and C(markdown).
  type: dict
"""

from ansible.errors import AnsibleFilterError
from ansible_collections.agentguard.hardening.plugins.filter.egress_policy_errors import egress_policy_errors

# module_utils are imported in the filters that use them (why: plugin_utils/_filters.py).

CATEGORIES = ("dns", "smtp", "metadata", "link-local", "protocol")


def egress_learn_proposal(hosts, accept=None, accept_withheld=None, system_uid_max=999, generated=""):
    from ansible_collections.agentguard.hardening.plugins.module_utils._learn import (
        diff_host,
        merged_allow,
        propose,
        render_markdown,
        render_yaml,
    )
    from ansible_collections.agentguard.hardening.plugins.module_utils._options import ROLE_VARIABLES

    if not isinstance(hosts, dict):
        raise AnsibleFilterError("egress_learn_proposal expects a dictionary of hosts, got %s" % type(hosts).__name__)
    accept_withheld = list(accept_withheld or [])
    unknown = [c for c in accept_withheld if c not in CATEGORIES]
    if unknown:
        raise AnsibleFilterError("egress_learn_accept_withheld: %s is not one of %s" % (unknown, ", ".join(CATEGORIES)))
    records = []
    current = []
    dns_servers = []
    dns_modes = set()
    sets = {}
    unread = {}
    for host in sorted(hosts):
        item = hosts[host] or {}
        learned = item.get("learned") or {}
        if learned.get("failed") or learned.get("unreachable") or "entries" not in learned:
            unread[host] = learned.get("msg", "not read")
            continue
        records.extend(dict(entry, host=host) for entry in learned["entries"])
        sets[host] = learned.get("sets", {})
        for entry in item.get("allow") or []:
            if entry not in current:
                current.append(entry)
        dns_servers.extend(s for s in item.get("dns_servers") or [] if s not in dns_servers)
        dns_modes.add(item.get("dns_mode") or "pinned")
    dns_mode = "filtering" if dns_modes == {"filtering"} else "pinned"
    try:
        proposal = propose(records, current, dns_servers, dns_mode, accept or [], accept_withheld, int(system_uid_max))
    except ValueError as exc:
        raise AnsibleFilterError("egress_learn_accept: %s" % exc)
    allow = merged_allow(current, proposal["allow"])
    diffs = dict((host, diff_host(hosts[host].get("allow") or [], proposal["allow"], host)) for host in sorted(hosts)
                 if host not in unread)
    options = {"allow": allow, "dns_servers": dns_servers, "dns_mode": dns_mode, "dns_resolver_user": "agentguard-dns",
               "mode": "enforce"}
    errors = egress_policy_errors(options, ROLE_VARIABLES)
    return {
        "proposal": proposal, "allow": allow, "diffs": diffs, "sets": sets, "errors": errors, "unread": sorted(unread),
        "yaml": render_yaml(allow, proposal, generated, sorted(hosts)),
        "markdown": render_markdown(proposal, diffs, sets, generated),
    }


class FilterModule(object):
    def filters(self):
        return {"egress_learn_proposal": egress_learn_proposal}
