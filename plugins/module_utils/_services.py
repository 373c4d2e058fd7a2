# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The host's own services that need a way out (time, security updates, DHCP), and whether a policy
leaves them one.

Private to agentguard.hardening. Services are found by their running processes (the kernel's
/proc/PID/comm, cut at 15 characters, HostIO.comms of _hostio), so the module needs no systemctl call.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

# comm -> (service, kind). The daemons run all the time; unattended-upgrades keeps its
# shutdown helper running while it is enabled (the downloads run from apt's timers as _apt).
PROCESSES = {
    "chronyd": ("chrony", "time"),
    "systemd-timesyn": ("systemd-timesyncd", "time"),
    "ntpd": ("ntpd", "time"),
    "ntpsec": ("ntpsec", "time"),
    "openntpd": ("openntpd", "time"),
    "unattended-upgr": ("unattended-upgrades", "updates"),
    "dhclient": ("dhclient", "dhcp"),
    "dhcpcd": ("dhcpcd", "dhcp"),
    "udhcpc": ("udhcpc", "dhcp"),
    "systemd-network": ("systemd-networkd", "dhcp"),
    "NetworkManager": ("NetworkManager", "dhcp"),
}

# What each kind needs, and the entry of the role README's recipes that gives it.
NEEDS = {
    "time": "an egress_allow entry for UDP 123 (or TCP 4460 for NTS) to the time servers, with users: the time "
            "daemon's user (recipe 'Time' in the role README)",
    "updates": "an egress_allow entry for TCP 80/443 to the package mirrors with users: [_apt] "
               "(recipe 'Security updates' in the role README)",
    "dhcp": "egress_dhcp: true (the default)",
}


def detect_services(comms):
    """[{"name", "kind"}] of the services running, sorted by kind then name, each once."""
    found = set(PROCESSES[comm] for comm in comms if comm in PROCESSES)
    return [{"name": name, "kind": kind} for name, kind in sorted(found, key=lambda item: (item[1], item[0]))]


def _opens(dest, protocol, ports):
    if dest.protocol != protocol:
        return False
    for spec in dest.ports:
        low, _sep, high = spec.partition(":")
        if any(int(low) <= port <= int(high or low) for port in ports):
            return True
    return False


def has_way_out(policy, kind):
    """Whether the policy lets a service of this kind out (restricted local processes only: with
    scope none or users, the host's services are not restricted at all)."""
    if policy.scope != "host" or policy.mode != "enforce":
        return True
    if kind == "dhcp":
        return policy.dhcp
    if kind == "time":
        return any(_opens(dest, "udp", (123,)) or _opens(dest, "tcp", (4460,)) for dest in policy.allow)
    if kind == "updates":
        return any(_opens(dest, "tcp", (80, 443)) and any(user.name == "_apt" for user in dest.users)
                   for dest in policy.allow)
    return True


def blocked_services(policy, services):
    """The services the policy leaves without a way out: [{"name", "kind", "needs"}]."""
    return [dict(service, needs=NEEDS[service["kind"]]) for service in services
            if not has_way_out(policy, service["kind"])]
