#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: egress_host_state
short_description: Read, in one call, what the egress role needs to know about a host
version_added: 0.1.0
description:
  - Returns the host's platform (read from C(/etc/os-release) and named as the distribution facts of
    M(ansible.builtin.setup) name it, and the Python running the module), whether systemd is PID 1, which
    of the given packages are installed, the state of the given systemd units, the type, mode, owner and
    SHA-256 of the given paths, and which of the given users do not exist.
  - With O(networks=true), also the host's container and VM networks (the bridges whose forwarded traffic
    the allowlist must cover, found with C(ip -j -d addr show)) and the container and VM runtimes it has;
    with O(query.runtime_users), which runtime API sockets those users can connect to.
  - The role C(agentguard.hardening.egress) runs it instead of fact gathering and a module per question, so
    an unchanged host costs this module alone in pinned DNS mode (with O(plan)).
author:
  - agentguard.hardening developers (@agentguard)
extends_documentation_fragment:
  - agentguard.hardening.linux
  - agentguard.hardening.read_only
attributes:
  platform:
    description: Linux hosts with C(dpkg) (Debian family) or C(rpm) (Red Hat family).
options:
  query:
    description:
      - What to read, in one mapping, so that a caller computes it once (the role evaluates one expression
        for all of it, not one per list). Each list left out is empty.
    type: dict
    version_added: 0.2.0
    suboptions:
      packages:
        description:
          - Package names to look up in the host's package database (C(dpkg-query) on the Debian family,
            C(rpm) on the Red Hat family). Names of another family's packages are simply not installed.
        type: list
        elements: str
        default: []
      active:
        description:
          - Units whose C(systemctl is-active) answer to return (only when systemd is PID 1).
          - All units of O(query.active) and O(query.enabled) are asked in one C(systemctl show) call.
        type: list
        elements: str
        default: []
      enabled:
        description: Units whose C(systemctl is-enabled) answer to return (only when systemd is PID 1).
        type: list
        elements: str
        default: []
      paths:
        description: Paths to describe, without following a symbolic link. Absent paths are left out of RV(paths).
        type: list
        elements: path
        default: []
      users:
        description: User names (or numeric uids, which always count as present) that must exist.
        type: list
        elements: str
        default: []
      runtime_users:
        description:
          - Restricted user names (or numeric uids) whose access to the API sockets of container and VM runtimes
            (Docker, Podman, containerd, libvirt, LXD) to return in RV(runtime_access).
          - A user who can connect to one of these sockets can start a container or VM, and with it traffic the
            rules for that user do not see.
        type: list
        elements: str
        default: []
  networks:
    description:
      - Also return RV(bridges) (runs C(ip -j -d addr show)) and RV(runtimes).
      - The runtimes' systemd units are asked in the same C(systemctl show) call as O(query.active) and
        O(query.enabled).
      - When C(ip) is missing or fails, RV(bridges) is empty and a warning says so.
    type: bool
    default: false
  firewalls:
    description:
      - Also return RV(firewalls), the other firewall managers of the host (C(nftables.service), firewalld, ufw) and
        what each does to the egress rules on start, reload, restart, stop and boot.
      - Their units are asked in the same C(systemctl show) call as O(query.active) and O(query.enabled), their packages in the
        same package query as O(query.packages); runs C(iptables -V) and, when C(nftables.service) is enabled or active,
        C(systemctl show -p ExecStart,ExecReload,ExecStop nftables.service), and reads the files its commands name.
    type: bool
    default: false
  plan:
    description:
      - The options of M(agentguard.hardening.egress_rules). When given, the module also plans those rules as
        M(agentguard.hardening.egress_rules) does in check mode (the same code, nothing changed) and returns the
        plan in RV(plan), so the role ends an unchanged host's run after this one module.
      - When the host cannot plan yet (no iptables, no dnspython, a user that does not exist, a name that does not
        resolve, invalid options), RV(plan) is null and RV(plan_skipped) says why; the module does not fail, since
        the role installs and creates what is missing, plans with M(agentguard.hardening.egress_rules) and reports
        its errors then.
    type: dict
"""

EXAMPLES = r"""
- name: Read what the persistence of the rules depends on
  agentguard.hardening.egress_host_state:
    query:
      packages: [iptables, ipset, netfilter-persistent]
      enabled: [netfilter-persistent.service]
      paths: [/etc/iptables/rules.v4, /etc/iptables/rules.v6, /etc/iptables/ipsets]
      users: [agent]
  register: host

- name: Fail when the agent's user is missing
  ansible.builtin.assert:
    that: host.missing_users | length == 0

- name: Read the container networks and who can drive their runtimes
  agentguard.hardening.egress_host_state:
    networks: true
    query:
      runtime_users: [agent]
  register: host

- name: Fail when the agent's user can start containers
  ansible.builtin.assert:
    that: host.runtime_access | length == 0
    fail_msg: "{{ host.runtime_access | map(attribute='socket') | join(', ') }} let the agent start containers"
"""

RETURN = r"""
plan:
  description:
    - With O(plan), what M(agentguard.hardening.egress_rules) in check mode returns for those options
      (C(changed), C(changes), C(resolved), C(rules), C(sets), C(tracking), C(families), C(tls_gate), C(networks),
      C(services)), without a diff; null when the host cannot plan yet.
  returned: when O(plan) is given
  type: dict
plan_skipped:
  description: Why RV(plan) is null; empty when it is not.
  returned: when O(plan) is given
  type: str
platform:
  description:
    - The host's platform from C(/etc/os-release) (C(/usr/lib/os-release) if absent), named as
      M(ansible.builtin.setup) names it for the Debian and Red Hat families; another distribution is named by
      its os-release C(NAME) and its family found from C(ID_LIKE).
  returned: always
  type: dict
  contains:
    system:
      description: The kernel's name, as C(ansible_facts.system).
      type: str
      sample: Linux
    distribution:
      description: As C(ansible_facts.distribution) (C(Debian), C(Ubuntu), C(RedHat), C(Rocky), ...).
      type: str
      sample: Debian
    distribution_major_version:
      description:
        - The major version from os-release's C(VERSION_ID) (on a Debian release without it, such as testing, from
          C(/etc/debian_version)); V(unknown) when it is not a number.
      type: str
      sample: "12"
    os_family:
      description: As C(ansible_facts.os_family).
      type: str
      sample: Debian
    python:
      description: The interpreter that ran the module.
      type: str
      sample: /usr/bin/python3
systemd:
  description: Whether systemd is PID 1 (C(/run/systemd/system) exists).
  returned: always
  type: bool
packages:
  description: The names among O(query.packages) that are installed.
  returned: always
  type: list
  elements: str
  sample: [iptables, ipset]
active:
  description: Unit name to what C(systemctl is-active) answers (its C(ActiveState)); empty without systemd.
  returned: always
  type: dict
  sample: {"agentguard-dns.service": inactive}
enabled:
  description:
    - Unit name to what C(systemctl is-enabled) answers (its C(UnitFileState); V(alias) for an alias,
      V(not-found) for a unit without a unit file, V(unknown) when systemctl has no answer); empty without
      systemd.
  returned: always
  type: dict
  sample: {"netfilter-persistent.service": enabled}
paths:
  description: For each of O(query.paths) that exists, its C(type) (V(file) or V(other)), C(mode), C(uid), C(gid) and, for a file, C(sha256).
  returned: always
  type: dict
  sample: {"/etc/iptables/rules.v4": {"type": file, "mode": "0600", "uid": 0, "gid": 0, "sha256": "9f86d0..."}}
missing_users:
  description: The names in O(query.users) that have no passwd entry.
  returned: always
  type: list
  elements: str
  sample: []
bridges:
  description:
    - The host's guest networks, sorted by name. A bridge counts unless one of its ports is a physical
      device (C(/sys/class/net/NAME/device) exists), a VLAN or macvlan on one, or a bond of them; such a bridge
      (C(br0) with C(eth0)) is the host's own uplink.
    - Empty when C(ip) is missing or fails (a warning then says so).
  returned: when O(networks=true)
  type: list
  elements: dict
  sample: [{"name": docker0, "runtime": docker, "networks": {"ipv4": ["172.17.0.0/16"], "ipv6": ["fd00:d0c::/64"]}}]
  contains:
    name:
      description: The bridge's interface name.
      type: str
    networks:
      description: The networks (CIDR) of the bridge's global addresses, by family; link-local ones are left out.
      type: dict
      contains:
        ipv4:
          description: The IPv4 networks.
          type: list
          elements: str
        ipv6:
          description: The IPv6 networks.
          type: list
          elements: str
    runtime:
      description:
        - What the name suggests created the bridge (V(docker), V(podman), V(kubernetes), V(libvirt), V(lxd) or V(unknown)).
      type: str
runtimes:
  description: The container and VM runtimes the host shows any sign of.
  returned: when O(networks=true)
  type: list
  elements: dict
  sample: [{"name": docker, "active": true, "evidence": ["unit docker.service active", "binary /usr/bin/docker",
            "socket /run/docker.sock"], "sockets": ["/run/docker.sock"], "firewall_backend": iptables}]
  contains:
    name:
      description: V(docker), V(podman), V(containerd), V(libvirt) or V(lxd).
      type: str
    active:
      description: Whether one of its systemd units is active or its API socket exists.
      type: bool
    evidence:
      description: What was found (C(unit NAME active), C(binary PATH), C(socket PATH)).
      type: list
      elements: str
    sockets:
      description: Its API sockets that exist.
      type: list
      elements: str
    firewall_backend:
      description: Docker only. V(nftables) when C(/etc/docker/daemon.json) sets C(firewall-backend) to it, else V(iptables).
      type: str
      returned: for Docker
    config_error:
      description: Docker only, when C(/etc/docker/daemon.json) is not a JSON object (also returned as a warning).
      type: str
      returned: when daemon.json is malformed
services:
  description:
    - The host's own services that need a way out and are running now, found by their processes; time
      daemons (kind C(time), chrony, systemd-timesyncd, ntpd, ntpsec, openntpd), unattended-upgrades
      (kind C(updates)) and DHCP clients (kind C(dhcp), dhclient, dhcpcd, udhcpc, systemd-networkd,
      NetworkManager). M(agentguard.hardening.egress_rules) says which of them a policy leaves without one.
  returned: always
  type: list
  elements: dict
  sample: [{"name": chrony, "kind": time}, {"name": dhclient, "kind": dhcp}]
firewalls:
  description:
    - With O(firewalls=true), each firewall manager whose package is installed or whose unit is enabled or active, in
      the order nftables, firewalld, ufw. What each does comes from its Debian 12 unit and scripts (nftables 1.0.6,
      firewalld 1.3.3, ufw 0.36.2), unit-tested against them; no automated test runs a manager on a host (the
      nftables answer was checked once by hand on a Debian 12 lab host with Debian's unit and configuration).
  returned: when O(firewalls=true)
  type: list
  elements: dict
  sample: [{"name": nftables, "unit": nftables.service, "installed": true, "enabled": enabled, "active": active,
            "alters_rules": true, "opens_egress": true, "flushes": {"start": "/etc/nftables.conf: flush ruleset",
            "reload": "/etc/nftables.conf: flush ruleset", "stop": "nft flush ruleset"},
            "config_files": [/etc/nftables.conf], "effect": "nftables.service is enabled and active; its start ..."}]
  contains:
    name:
      description: V(nftables), V(firewalld) or V(ufw).
      type: str
    unit:
      description: Its systemd unit.
      type: str
    installed:
      description: Whether its package is installed.
      type: bool
    enabled:
      description: What C(systemctl is-enabled) answers for its unit (V(unknown) without systemd).
      type: str
    active:
      description: What C(systemctl is-active) answers for its unit (V(unknown) without systemd).
      type: str
    alters_rules:
      description: Whether a start, reload, restart, stop or boot of it changes the egress rules (chains, jumps, OUTPUT policy).
      type: bool
    opens_egress:
      description: Whether egress is open after it did.
      type: bool
    effect:
      description: What it does to the egress rules, in one sentence.
      type: str
    flushes:
      description:
        - nftables only, when its unit is enabled or active. For C(start), C(reload) and C(stop), the statement
          that removes the tables of iptables-nft (C(flush ruleset), or a C(flush) or C(delete) of an C(ip) or C(ip6)
          table iptables uses), prefixed by the file it is in, or the unit's command itself; empty when none.
      type: dict
      returned: for nftables
    config_files:
      description: nftables only, the configuration files read (the unit's C(nft -f) file and its includes).
      type: list
      elements: str
      returned: for nftables
    firewall_backend:
      description: firewalld only, C(FirewallBackend) of C(/etc/firewalld/firewalld.conf) (default V(nftables)).
      type: str
      returned: for firewalld
    ufw_enabled:
      description: ufw only, C(ENABLED=yes) in C(/etc/ufw/ufw.conf).
      type: bool
      returned: for ufw
    manage_builtins:
      description: ufw only, C(MANAGE_BUILTINS=yes) in C(/etc/default/ufw).
      type: bool
      returned: for ufw
    output_policy:
      description: ufw only, C(DEFAULT_OUTPUT_POLICY) of C(/etc/default/ufw).
      type: str
      returned: for ufw
iptables_backend:
  description: With O(firewalls=true), V(nf_tables), V(legacy) or V(unknown), from C(iptables -V).
  returned: when O(firewalls=true)
  type: str
runtime_access:
  description:
    - For each of O(query.runtime_users), the runtime API sockets that user can connect to (write permission on the
      socket, as its owner, through a group, as others, or as root). ACLs and the permissions of the
      directories on the way are not looked at.
    - A user that does not exist is left out (see RV(missing_users) with O(query.users)).
  returned: always
  type: list
  elements: dict
  sample: [{"user": agent, "uid": 1000, "socket": /run/docker.sock, "runtime": docker, "via": group docker}]
  contains:
    user:
      description: The name as given in O(query.runtime_users).
      type: str
    uid:
      description: Its uid.
      type: int
    socket:
      description: The socket's path.
      type: str
    runtime:
      description: The runtime the socket belongs to.
      type: str
    via:
      description: V(owner), V(group NAME), V(others) or V(root).
      type: str
"""

import os
import platform
import sys

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible_collections.agentguard.hardening.plugins.module_utils._host import (
    host_state,
    parse_os_release,
    platform_facts,
)
from ansible_collections.agentguard.hardening.plugins.module_utils import _firewalls, _netdev, _services
from ansible_collections.agentguard.hardening.plugins.module_utils._hostio import module_host
from ansible_collections.agentguard.hardening.plugins.module_utils._policy import ARGUMENT_SPEC as RULES_SPEC
from ansible_collections.agentguard.hardening.plugins.module_utils._rules import RulesError, plan_rules

ARGUMENT_SPEC = dict(
    query=dict(type="dict", apply_defaults=True, options=dict(
        packages=dict(type="list", elements="str", default=[]),
        active=dict(type="list", elements="str", default=[]),
        enabled=dict(type="list", elements="str", default=[]),
        paths=dict(type="list", elements="path", default=[]),
        users=dict(type="list", elements="str", default=[]),
        runtime_users=dict(type="list", elements="str", default=[]),
    )),
    networks=dict(type="bool", default=False),
    firewalls=dict(type="bool", default=False),
    plan=dict(type="dict"),
)


def _read_first(*paths):
    """The text of the first readable path ('' if none)."""
    for path in paths:
        try:
            with open(path) as handle:
                return handle.read()
        except (IOError, OSError):
            continue
    return ""


def early_plan(module, options):
    """(plan, why not): egress_rules' check-mode result for options, or (None, the reason it cannot plan yet).
    Never fails the module: the role reports the errors from egress_rules itself, after the phases that
    install and create what is missing."""
    validated = ArgumentSpecValidator(RULES_SPEC).validate(options)
    if validated.error_messages:
        return None, "invalid options: %s" % "; ".join(validated.error_messages)
    warnings = []
    try:
        # A missing command is an error here (required=False answers None): the module must not fail.
        host = module_host(module, warn=warnings.append,
                           which=lambda name, required=False: module.get_bin_path(name) or (_missing(name) if required else None))
        result = plan_rules(validated.validated_parameters, host)[0]
    except (RulesError, OSError) as exc:
        return None, str(exc)
    # An unchanged plan ends the run here, so this module says what it leaves open; a changed one is planned
    # again by egress_rules, which says it then.
    for warning in warnings if not result["changed"] else []:
        module.warn(warning)
    return result, ""


def _missing(name):
    raise OSError("%s is not installed" % name)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    # Not check_rc: dpkg-query exits 1 when one of several names is unknown, and still answers (HostIO.output).
    host = module_host(module)
    facts = platform_facts(parse_os_release(_read_first("/etc/os-release", "/usr/lib/os-release")),
                           _read_first("/etc/debian_version"))
    facts.update(system=platform.system(), python=sys.executable)
    networks = module.params["networks"]
    asked = module.params["query"]
    query = dict(asked)
    if networks:  # the runtimes' units, asked in the same systemctl call as the caller's
        query["active"] = list(asked["active"]) + _netdev.RUNTIME_UNITS
    firewalls = module.params["firewalls"]
    if firewalls:  # the firewall managers' units and packages, in the same calls
        query["active"] = list(query["active"]) + list(_firewalls.UNITS.values())
        query["enabled"] = list(asked["enabled"]) + list(_firewalls.UNITS.values())
        query["packages"] = list(asked["packages"]) + _firewalls.PACKAGES
    state = host_state(query, host, os.path.isdir("/run/systemd/system"), facts["os_family"])
    units, enabled = state["active"], state["enabled"]
    state["active"] = dict((unit, units[unit]) for unit in asked["active"] if unit in units)
    state["enabled"] = dict((unit, enabled[unit]) for unit in asked["enabled"] if unit in enabled)
    packages = state["packages"]
    state["packages"] = [name for name in packages if name in asked["packages"]]
    if firewalls:
        state.update(_firewalls.read_firewalls(host, packages, units, enabled))
    users = _netdev.runtime_users(host, asked["runtime_users"])
    found = _netdev.read_host(host, users, units, networks=networks)
    for warning in found.pop("warnings"):
        module.warn(warning)
    state.update(found)
    state["services"] = _services.detect_services(host.comms())
    if module.params["plan"] is not None:
        state["plan"], state["plan_skipped"] = early_plan(module, module.params["plan"])
    module.exit_json(changed=False, platform=facts, **state)


if __name__ == "__main__":
    main()
