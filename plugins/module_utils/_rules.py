# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The plan of egress_rules, from its options to its result, for the two modules that make it.

Private to agentguard.hardening. egress_rules plans and then applies; egress_host_state plans in the same
call as it reads the host when the role asks it to (an unchanged host then costs one module run). Both run
this: the options (ARGUMENT_SPEC, defined in _policy and documented in egress_rules), the policy, the resolution through the
trusted resolvers, the live state and the plan, and what the plan leaves open (container networks,
services), with every failure raised as RulesError carrying the message the module fails with.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.agentguard.hardening.plugins.module_utils._desired import desired_document, desired_hash_of
from ansible_collections.agentguard.hardening.plugins.module_utils._netdev import (
    coverage,
    docker_firewall_backend,
    read_networks,
    read_routes,
    uplink_errors,
)
from ansible_collections.agentguard.hardening.plugins.module_utils._netfilter import CommandError, Netfilter
from ansible_collections.agentguard.hardening.plugins.module_utils._plan import make_plan, plan_diff, read_live
from ansible_collections.agentguard.hardening.plugins.module_utils._policy import FAMILIES, PolicyError, build_policy
from ansible_collections.agentguard.hardening.plugins.module_utils._resolve import (
    ResolveError,
    load_dnspython,
    resolve_destinations,
)
from ansible_collections.agentguard.hardening.plugins.module_utils._services import blocked_services, detect_services
from ansible_collections.agentguard.hardening.plugins.module_utils._state import ParseError
from ansible_collections.agentguard.hardening.plugins.module_utils._tlsgate import gate_result


class RulesError(Exception):
    """Why the rules cannot be planned; nothing was changed. extra: what the module's failure carries."""

    def __init__(self, msg, missing_lib=False, **extra):
        super(RulesError, self).__init__(msg)
        self.missing_lib = missing_lib
        self.extra = extra


def managed_families(host):
    """IPv4 always; IPv6 unless the kernel has none (then only IPv4 is managed, and the module warns)."""
    return [f for f in FAMILIES if f == "ipv4" or host.exists("/proc/net/if_inet6")]


def plan_rules(params, host, want_diff=False):
    """(result, plan, netfilter): the plan of egress_rules for params (validated against _policy.ARGUMENT_SPEC) on host
    (a HostIO of _hostio: its commands, users, files and processes; host.warn says what the plan leaves open), and the
    module's result for it (what a check-mode run returns). Nothing is changed.

    Raises RulesError (missing_lib when dnspython is missing). scope_networks that reach the host's way out
    (_netdev.uplink_errors) are refused, check mode too.
    """
    warn = host.warn
    resolve = host.resolve or resolve_destinations
    try:
        policy = build_policy(params, host.uid_of)
    except PolicyError as exc:
        raise RulesError("invalid options, nothing was changed:\n" + str(exc), errors=exc.errors)

    if policy.state == "present" and any(d.kind == "name" for d in policy.allow):
        try:
            load_dnspython()
        except ImportError:
            raise RulesError("dnspython (Debian: python3-dnspython)", missing_lib=True)

    families = managed_families(host)
    if "ipv6" not in families:
        warn("this kernel has no IPv6; only IPv4 is managed")
    if policy.state == "present" and policy.networks and policy.deny_action == "reject" and policy.mode == "enforce":
        warn("deny_action=reject applies to local processes only: connections from scope_networks "
             "are dropped (REJECT does not exist in the mangle table, where the forward path is judged)")

    nf = Netfilter(host.run, host.which)
    resolved = {}
    try:
        if policy.state == "present":
            resolved = resolve(policy.allow, policy.resolvers, policy.families,
                               timeout=params["resolve_timeout"], retries=params["resolve_retries"])
        live, live_sets = read_live(nf, families)
        plan = make_plan(policy, resolved, families, live, live_sets)
    except ResolveError as exc:
        raise RulesError("%s; nothing was changed" % exc)
    except (CommandError, ParseError, ValueError) as exc:
        raise RulesError("cannot read the live netfilter state, nothing was changed: %s" % exc)

    network_warnings = []
    if policy.state == "present" and policy.networks:
        # An element that reaches the host's way out would let every forwarded connection out unchecked.
        routes, lan, network_warnings = read_routes(host)
        destinations = list(policy.dns_servers) + [address for answer in resolved.values()
                                                   for family in FAMILIES for address in answer.get(family) or []]
        bridges, bridge_warnings = read_networks(host)
        network_warnings = list(bridge_warnings) + list(network_warnings)
        errors = uplink_errors(params["scope_networks"], routes, lan, destinations, [b["name"] for b in bridges])
        if errors:
            raise RulesError("invalid options, nothing was changed:\n" + "\n".join(errors), errors=errors)

    if plan.sets_update and not nf.has_ipset():
        raise RulesError("destination(s) %s need ipset, which is not installed; nothing was changed"
                         % ", ".join(sorted(plan.desired_sets)))

    # The guard's desired state (_guard): written by the apply; a host whose file says another policy
    # (or has none, as before the guard existed) changes, so the role applies and writes it.
    desired_changed = False
    if params.get("state_dir"):
        want = desired_document(plan, 0)
        desired_changed = desired_hash_of(params["state_dir"]) != (want and want["hash"])
    result = dict(
        changed=plan.changed or desired_changed,
        desired_state_changed=desired_changed,
        changes=plan.changes,
        resolved=resolved,
        rules=dict((f, plan.rules.get(f, "")) for f in FAMILIES),
        sets=plan.sets_payload,
        tracking=dict((f, plan.live[f].tracking) for f in families),
        families=families,
        tls_gate=gate_result(policy, resolved),
    )
    for item in result["tls_gate"]["ungated"]:
        warn("the TLS gate does not cover %s (%s, ports %s): %s"
             % (item["entry"], item["host"], ", ".join(str(p) for p in item["ports"]), item["reason"]))
    if policy.state == "present":
        # Never silent: container bridges the forward path does not reach, in check mode too.
        if not policy.networks:
            bridges, network_warnings = read_networks(host)
        for warning in network_warnings:
            warn(warning)
        covered, uncovered = coverage(params["scope_networks"], bridges)
        result["networks"] = dict(covered=covered, uncovered=uncovered, docker_firewall_backend=docker_firewall_backend(host))
        running = detect_services(host.comms())
        result["services"] = dict(running=running, blocked=blocked_services(policy, running))
    if want_diff:
        result["diff"] = plan_diff(plan)
    return result, plan, nf
