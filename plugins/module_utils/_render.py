# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Render the desired managed state and the iptables-restore / ipset payloads.

Private to agentguard.hardening. Rule specs are written exactly as
iptables-save prints them, so live and desired state compare as plain text.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible_collections.agentguard.hardening.plugins.module_utils._state import (
    BUILTIN_FILTER_CHAINS,
    EMPTY_HOOK,
    HOOK_TABLES,
    HOOKS,
    SET_PREFIXES,
    HookState,
    IpSet,
    ManagedState,
    canonical,
    network_of,
    sort_networks,
)

CHAIN_ENTRY = "AGENTGUARD-EGRESS"
CHAIN_ALLOW = "AGENTGUARD-ALLOW"
CHAIN_DENY = "AGENTGUARD-DENY"
JUMP_SPEC = "-j " + CHAIN_ENTRY
# Forwarded traffic (mangle table) and, in filtering DNS mode, the DNS redirect (nat table).
CHAIN_FWD = "AGENTGUARD-FORWARD"
CHAIN_FWD_ALLOW = "AGENTGUARD-FWD-ALLOW"
CHAIN_FWD_DENY = "AGENTGUARD-FWD-DENY"
CHAIN_DNS = "AGENTGUARD-DNS"
# The recorder (learn): every distinct would-be-denied destination in a hash:ip,port set.
CHAIN_LEARN = "AGENTGUARD-LEARN"
# The TLS gate: local connections redirected in nat OUTPUT, forwarded ones in nat PREROUTING, and
# connections to its listeners that were not redirected dropped in filter INPUT.
CHAIN_TLS = "AGENTGUARD-TLS"
CHAIN_TLS_FWD = "AGENTGUARD-TLS-FWD"
CHAIN_TLS_IN = "AGENTGUARD-TLS-IN"
TLS_LOG_PREFIX = "[EGRESS-TLS] "
LOOPBACK = {"ipv4": "127.0.0.1/32", "ipv6": "::1/128"}
# Every table's builtin chains, for a complete table at boot (policies are always ACCEPT there).
TABLE_CHAINS = {
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
}

# Above this many addresses per family, a destination is matched with an ipset
# (hash:net) so the per-packet cost does not grow with the list.
SET_THRESHOLD = 8
COMMENT = "agentguard: %s"
HOST_BITS = {"ipv4": 32, "ipv6": 128}
SET_FAMILY = {"ipv4": "inet", "ipv6": "inet6"}

# IPv6 needs neighbour discovery to reach even the allowed destinations. These
# messages never leave the link (hop limit 255 is checked by receivers).
ND_TYPES = (133, 135, 136)
# The kernel's multicast listener reports (MLDv1 report and done, MLDv2 report; IGMP): a switch that
# snoops them delivers the host's solicited-node groups, so dropping them breaks neighbour discovery
# to the host (RFC 4890, 4.4.1). Link scope and hop limit 1: they never leave the link, and only the
# kernel or a raw socket sends them.
LISTENER_REPORTS = {
    "ipv4": ("-d 224.0.0.0/24 -p igmp -m ttl --ttl-eq 1",),
    "ipv6": tuple("-d ff02::/16 -p ipv6-icmp -m icmp6 --icmpv6-type %d -m hl --hl-eq 1" % t for t in (131, 132, 143)),
}
# DHCP clients renew their leases from the privileged client ports (only root or a holder of
# CAP_NET_BIND_SERVICE can bind them, so an unprivileged agent cannot send from them), DHCPv6 only
# to the All_DHCP_Relay_Agents_and_Servers group and to link-local servers (RFC 8415).
# Destinations that are never routed off the link: the local network control block and the limited
# broadcast (IPv4), the link-local multicast scope (IPv6).
LINK_LOCAL = {"ipv4": ("224.0.0.0/24", "255.255.255.255/32"), "ipv6": ("ff02::/16",)}
DHCP_RULES = {
    "ipv4": ("-p udp -m udp --sport 68 --dport 67",),
    "ipv6": ("-d ff02::1:2/128 -p udp -m udp --sport 546 --dport 547",
             "-d fe80::/10 -p udp -m udp --sport 546 --dport 547"),
}


def _comment(label):
    return '-m comment --comment "%s"' % (COMMENT % label)


def _addr(text, family):
    net = network_of(text)
    if net.prefixlen:
        return canonical(text)
    return "%s/%d" % (net.network_address, HOST_BITS[family])


def _dport(protocol, port):
    return "-p %s -m %s --dport %s" % (protocol, protocol, port)


def set_name(family, label):
    return SET_PREFIXES[family] + label


def _family_of(text):
    return "ipv%d" % network_of(text).version


def is_dynamic(policy, dest):
    """In filtering mode the resolver fills a name's sets as it answers: they follow DNS."""
    return policy.dns_mode == "filtering" and dest.kind == "name"


# The recorder's set labels start with "_", which no allow label can (_policy.LABEL_RE), so they
# never clash with an entry's set: ag4-_learn (everyone not recorded apart), ag4-_learn-u<uid>
# (one per restricted or learn_users user), ag4-_learn-fwd (forwarded from scope_networks).
LEARN_LABEL = "_learn"
LEARN_TYPE = "hash:ip,port"


def learn_on(policy):
    return policy.state == "present" and bool(policy.learn)


def learn_users(policy):
    """The users whose destinations are recorded apart, by uid: the restricted ones and learn_users."""
    users = dict((user.uid, user) for user in policy.learn_users)
    for user in restricted_users(policy):
        users.setdefault(user.uid, user)
    return [users[uid] for uid in sorted(users)]


def learn_set_names(policy, family):
    """{bucket: set name}: "" for everyone else on the host, "u<uid>" per user, "fwd" for forwarded."""
    if not learn_on(policy):
        return {}
    names = {}
    if policy.scope != "none" or gate_on(policy):
        names[""] = set_name(family, LEARN_LABEL)
        for user in learn_users(policy):
            names["u%d" % user.uid] = set_name(family, "%s-u%d" % (LEARN_LABEL, user.uid))
    if policy.networks:
        names["fwd"] = set_name(family, LEARN_LABEL + "-fwd")
    return names


def learn_sets(policy):
    """The recorder's sets, dynamic like filtering mode's (a timeout: members never compared):
    hash:ip,port with counters, bounded by learn_maxelem (a full set refuses new entries)."""
    sets = {}
    for family in policy.families:
        for name in learn_set_names(policy, family).values():
            sets[name] = IpSet(name, LEARN_TYPE, SET_FAMILY[family],
                               {"timeout": str(policy.learn_timeout), "maxelem": str(policy.learn_maxelem),
                                "counters": True}, ())
    return sets


def _record(match, name):
    """Count a packet to a recorded destination, or record it: the set match counts (an add with
    --exist would reset the entry's counters and timeout, so there is none); the add of an entry
    already there (or into a full set) fails and changes nothing. Timeouts run from the first packet."""
    return ["%s-m set --match-set %s dst,dst" % (match, name), "%s-j SET --add-set %s dst,dst" % (match, name)]


def _learn_rules(policy, family):
    names = learn_set_names(policy, family)
    rules = []
    for user in learn_users(policy):
        owner = "-m owner --uid-owner %d " % user.uid
        rules.extend(_record(owner, names["u%d" % user.uid]))
        rules.append("%s-j RETURN" % owner)
    rules.extend(_record("", names[""]))
    return rules


def desired_sets(policy, resolved):
    """The ipsets the policy needs: {name: IpSet}.

    Dynamic sets (filtering mode) carry a default timeout; their members are only a seed
    from this run's resolution, and are not compared afterwards.
    """
    sets = {}
    if policy.state != "present":
        return sets
    for dest in policy.allow:
        for family in policy.families:
            addresses = resolved.get(dest.name, {}).get(family, [])
            name = set_name(family, dest.name)
            if is_dynamic(policy, dest):
                sets[name] = IpSet(name, "hash:net", SET_FAMILY[family], {"timeout": str(policy.dns_set_timeout)},
                                   tuple(sort_networks(addresses)))
            elif len(addresses) > SET_THRESHOLD:
                sets[name] = IpSet(name, "hash:net", SET_FAMILY[family], {}, tuple(sort_networks(addresses)))
    sets.update(learn_sets(policy))
    return sets


def _allow_rules(policy, resolved, family, sets):
    rules = ["-o lo -j ACCEPT", "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"]
    if gate_redirects_local(policy) and family in policy.families:
        # A connection redirected to the gate keeps the output device of its original route in filter
        # OUTPUT, so "-o lo" above does not match it (docs/tls-gate.md): accept it by its DNAT state.
        rules.append("-d %s -p tcp -m tcp --dport %s -m conntrack --ctstate DNAT %s -j ACCEPT"
                     % (LOOPBACK[family], listener_ports(policy), _comment("tls gate")))
    if family == "ipv6":
        for icmp_type in ND_TYPES:
            rules.append("-p ipv6-icmp -m icmp6 --icmpv6-type %d -m hl --hl-eq 255 %s -j ACCEPT"
                         % (icmp_type, _comment("neighbour discovery")))
    rules.extend("%s %s -j ACCEPT" % (match, _comment("multicast listener report")) for match in LISTENER_REPORTS[family])
    if policy.dhcp:
        # Like neighbour discovery, what keeps the host's addresses: also in a family not opened.
        rules.extend("%s -m conntrack --ctstate NEW %s -j ACCEPT" % (match, _comment("dhcp"))
                     for match in DHCP_RULES[family])
    if family not in policy.families:
        # A family the policy does not open is still locked down: a host is not
        # hardened while the other family's egress is open.
        rules.append("-j " + CHAIN_DENY)
        return rules
    for server in policy.dns_servers:
        if _family_of(server) != family:
            continue
        for protocol in ("udp", "tcp"):
            if policy.dns_mode == "filtering":
                # Only the local filtering resolver may ask upstream; everyone else asks it over lo.
                rules.append("-d %s %s -m owner --uid-owner %d -m conntrack --ctstate NEW %s -j ACCEPT"
                             % (_addr(server, family), _dport(protocol, 53), policy.resolver_user.uid,
                                _comment("dns via " + policy.resolver_user.name)))
            else:
                rules.append("-d %s %s -m conntrack --ctstate NEW %s -j ACCEPT"
                             % (_addr(server, family), _dport(protocol, 53), _comment("dns")))
    rules.extend(_destination_rules(policy, resolved, family, sets, forwarded=False))
    rules.append("-j " + CHAIN_DENY)
    return rules


def _destination_rules(policy, resolved, family, sets, forwarded):
    """One rule per allowed destination address (or its set), port and owner: ACCEPT on the local path;
    on the forwarded path RETURN, and no entry with users (a forwarded packet has no owner)."""
    rules = []
    verdict = "RETURN" if forwarded else "ACCEPT"
    for dest in policy.allow:
        if forwarded and dest.users:
            continue  # for the host's own services
        # Sorted: the order of the DNS answers never changes the rules.
        addresses = sort_networks(resolved.get(dest.name, {}).get(family, []))
        name = set_name(family, dest.name)
        # An entry with users: only their processes (an owner match, one rule per user).
        owners = ["-m owner --uid-owner %d " % user.uid for user in dest.users] or [""]
        for port in dest.ports:
            for owner in owners:
                tail = "%s-m conntrack --ctstate NEW %s -j %s" % (owner, _comment(dest.name), verdict)
                if name in sets:
                    rules.append("-p %s -m set --match-set %s dst -m %s --dport %s %s"
                                 % (dest.protocol, name, dest.protocol, port, tail))
                    continue
                rules.extend("-d %s %s %s" % (_addr(address, family), _dport(dest.protocol, port), tail)
                             for address in addresses)
    return rules


def _deny_rules(policy, family):
    rules = ["-m limit --limit %s --limit-burst %d -j LOG --log-prefix \"%s\" --log-uid"
             % (policy.log_limit, policy.log_burst, policy.log_prefix)]
    if learn_on(policy) and family in policy.families:
        rules.insert(0, "-j " + CHAIN_LEARN)
    if policy.mode == "audit":
        rules.append("-j RETURN")
    elif policy.deny_action == "reject":
        rules.append("-p tcp -j REJECT --reject-with tcp-reset")
        rules.append("-j REJECT --reject-with %s"
                     % ("icmp-admin-prohibited" if family == "ipv4" else "icmp6-adm-prohibited"))
    else:
        rules.append("-j DROP")
    return rules


def restricted_users(policy):
    """The users whose egress the filter table restricts with scope users (or none): the gate's user
    too, since its upstream connections are held to the allowlist like everyone's."""
    users = list(policy.users) if policy.scope == "users" else []
    if gate_on(policy) and policy.tls_gate_user is not None and all(u.uid != policy.tls_gate_user.uid for u in users):
        users.append(policy.tls_gate_user)
    return sorted(users, key=lambda user: user.uid)


def _entry_rules(policy):
    if policy.scope == "host":
        return ["-j " + CHAIN_ALLOW]
    return ["-m owner --uid-owner %d %s -j %s" % (user.uid, _comment("user " + user.name), CHAIN_ALLOW)
            for user in restricted_users(policy)]


def gate_on(policy):
    return policy.state == "present" and policy.tls_gate != "off" and bool(policy.tls_listeners)


def gate_redirects_local(policy):
    """Local processes are redirected with scope host or users; scope none restricts none."""
    return gate_on(policy) and policy.scope in ("host", "users")


def listener_ports(policy):
    """The listeners as one --dport value: they are consecutive ports ("10443" or "10443:10444")."""
    first, last = policy.tls_listeners[0][1], policy.tls_listeners[-1][1]
    return str(first) if first == last else "%d:%d" % (first, last)


def desired_state(policy, resolved, family, sets=None):
    """The ManagedState this family's filter table should have (with scope none, nothing: no local
    process is restricted, only forwarded traffic, see desired_hooks; but the TLS gate's user)."""
    if policy.state != "present" or policy.scope == "none" and not gate_on(policy):
        return ManagedState("ACCEPT", (), ())
    if sets is None:
        sets = desired_sets(policy, resolved)
    chains = {
        CHAIN_ENTRY: tuple(_entry_rules(policy)),
        CHAIN_ALLOW: tuple(_allow_rules(policy, resolved, family, sets)),
        CHAIN_DENY: tuple(_deny_rules(policy, family)),
    }
    if learn_on(policy) and family in policy.families:
        chains[CHAIN_LEARN] = tuple(_learn_rules(policy, family))
    policy_verdict = "DROP" if policy.scope == "host" and policy.mode == "enforce" else "ACCEPT"
    return ManagedState(policy_verdict, ((0, JUMP_SPEC),), tuple(sorted(chains.items())))


def _network_match(network, family, direction):
    """The match selecting a scope network on the way in ("in": -i/-s) or out ("out": -o/-d), or
    None when the network is a CIDR of the other family."""
    if network.kind == "iface":
        return "%s %s" % ("-i" if direction == "in" else "-o", network.value)
    if network.kind != family:
        return None
    return "%s %s" % ("-s" if direction == "in" else "-d", _addr(network.value, family))


def _network_label(network):
    return "network " + network.value


def _fwd_allow_rules(policy, resolved, family, sets):
    """What a NEW connection from a container network may reach: the local allowlist, with RETURN
    (the runtime's own FORWARD rules still decide) instead of ACCEPT, and no owner matches
    (forwarded packets have no local socket)."""
    rules = ["-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"]
    # Link-scoped destinations never leave the bridge they were sent on (neighbour discovery between
    # containers, mDNS, DHCP broadcasts): with a CIDR network no "-o" rule below would match them.
    rules.extend("-d %s %s -j RETURN" % (network, _comment("link-local")) for network in LINK_LOCAL[family])
    for network in policy.networks:
        match = _network_match(network, family, "out")
        if match:
            # Between covered networks: both ends are held to this policy when they leave, and the
            # runtime's isolation rules decide whether they may talk.
            rules.append("%s %s -j RETURN" % (match, _comment("between covered networks")))
    if family not in policy.families:
        rules.append("-j " + CHAIN_FWD_DENY)
        return rules
    if policy.dns_mode == "pinned":
        # In filtering mode DNS from these networks is redirected to the local resolver (nat
        # PREROUTING) before it is routed: a query that still arrives here goes upstream directly.
        for server in policy.dns_servers:
            if _family_of(server) != family:
                continue
            for protocol in ("udp", "tcp"):
                rules.append("-d %s %s -m conntrack --ctstate NEW %s -j RETURN"
                             % (_addr(server, family), _dport(protocol, 53), _comment("dns")))
    rules.extend(_destination_rules(policy, resolved, family, sets, forwarded=True))
    rules.append("-j " + CHAIN_FWD_DENY)
    return rules


def _fwd_deny_rules(policy, family=None):
    # The same log line as local denials, without --log-uid (a forwarded packet has no local
    # socket; the source address says which container sent it). REJECT exists in the filter table
    # only, where runtimes can outrank us: forwarded denials are dropped whatever deny_action says.
    rules = ["-m limit --limit %s --limit-burst %d -j LOG --log-prefix \"%s\""
             % (policy.log_limit, policy.log_burst, policy.log_prefix)]
    if learn_on(policy) and family in policy.families:
        # Inline (the chain is reached by goto): a forwarded packet has no owner to bucket by.
        rules[:0] = _record("", learn_set_names(policy, family)["fwd"])
    rules.append("-j RETURN" if policy.mode == "audit" else "-j DROP")
    return rules


def desired_hooks(policy, resolved, family, sets=None):
    """{table: HookState} for the tables of HOOKS: the forward path (mangle) when the policy has
    scope_networks, and the DNS redirect (nat) when it also uses the filtering resolver."""
    hooks = dict((table, EMPTY_HOOK) for table in HOOKS)
    if policy.state != "present":
        return hooks
    if sets is None:
        sets = desired_sets(policy, resolved)
    hooks.update(_gate_hooks(policy, resolved, family, sets))
    if not policy.networks:
        return hooks
    dispatch = []
    for network in policy.networks:
        match = _network_match(network, family, "in")
        if match:
            # goto: the RETURN at the end of the allow chain goes back to FORWARD itself, so one
            # packet is judged once even when it matches several networks.
            dispatch.append("%s %s -g %s" % (match, _comment(_network_label(network)), CHAIN_FWD_ALLOW))
    chains = {
        CHAIN_FWD: tuple(dispatch),
        CHAIN_FWD_ALLOW: tuple(_fwd_allow_rules(policy, resolved, family, sets)),
        CHAIN_FWD_DENY: tuple(_fwd_deny_rules(policy, family)),
    }
    hooks["mangle"] = HookState(((0, "-j " + CHAIN_FWD),), tuple(sorted(chains.items())))
    nat_jumps = []
    nat_chains = []
    if policy.dns_mode == "filtering":
        redirect = []
        for network in policy.networks:
            match = _network_match(network, family, "in")
            if not match:
                continue
            for protocol in ("udp", "tcp"):
                redirect.append("%s %s %s -j REDIRECT --to-ports 53"
                                % (match, _dport(protocol, 53), _comment("dns to the filtering resolver")))
        nat_jumps.append("-j " + CHAIN_DNS)
        nat_chains.append((CHAIN_DNS, tuple(redirect)))
    gate_rules = _gate_redirects(policy, resolved, family, sets, forwarded=True)
    if gate_rules:
        # One jump per network: the chain then names each destination once.
        for network in policy.networks:
            match = _network_match(network, family, "in")
            if match:
                nat_jumps.append("%s %s -j %s" % (match, _comment(_network_label(network)), CHAIN_TLS_FWD))
        nat_chains.append((CHAIN_TLS_FWD, tuple(gate_rules)))
    if nat_jumps:
        hooks["nat"] = HookState(tuple(enumerate(nat_jumps)), tuple(sorted(nat_chains)))
    return hooks


def _gate_destinations(policy, resolved, family, sets):
    """(match, port, label) for each gated destination address (or set) and port of this family."""
    result = []
    if family not in policy.families:
        return result
    for dest in policy.allow:
        if not dest.tls_ports:
            continue
        name = set_name(family, dest.name)
        for port in dest.tls_ports:
            if name in sets:
                result.append(("-p tcp -m set --match-set %s dst -m tcp --dport %d" % (name, port), port, dest.name))
                continue
            for address in sort_networks(resolved.get(dest.name, {}).get(family, [])):
                result.append(("-d %s %s" % (_addr(address, family), _dport("tcp", port)), port, dest.name))
    return result


def _gate_redirects(policy, resolved, family, sets, forwarded):
    """The LOG and REDIRECT rule pairs of the gate's nat chain: NEW TCP connections to the gated
    destinations go to the listener of their port. The LOG line (uid for a local process, the source
    address for a container) is what joins a refusal in the gate's log to its sender."""
    if not gate_on(policy) or not forwarded and not gate_redirects_local(policy):
        return []
    listen = dict(policy.tls_listeners)
    rules = []
    if not forwarded:
        # The gate's own upstream connections go where it decided, held to the allowlist in filter.
        rules.append("-m owner --uid-owner %d %s -j RETURN" % (policy.tls_gate_user.uid, _comment("tls gate user")))
    log = "-m limit --limit %s --limit-burst %d -j LOG --log-prefix \"%s\"%s" % (
        policy.log_limit, policy.log_burst, TLS_LOG_PREFIX, "" if forwarded else " --log-uid")
    for match, port, label in _gate_destinations(policy, resolved, family, sets):
        head = "%s -m conntrack --ctstate NEW %s" % (match, _comment("tls " + label))
        rules.append("%s %s" % (head, log))
        rules.append("%s -j REDIRECT --to-ports %d" % (head, listen[port]))
    return rules if len(rules) > (0 if forwarded else 1) else []


def _gate_hooks(policy, resolved, family, sets):
    """The gate's nat OUTPUT redirect (local processes) and filter INPUT guard of its listeners."""
    hooks = {}
    if not gate_on(policy):
        return hooks
    local = _gate_redirects(policy, resolved, family, sets, forwarded=False)
    if local:
        if policy.scope == "host":
            jumps = ["-j " + CHAIN_TLS]
        else:
            gate_uid = policy.tls_gate_user.uid
            jumps = ["-m owner --uid-owner %d %s -j %s" % (user.uid, _comment("user " + user.name), CHAIN_TLS)
                     for user in restricted_users(policy) if user.uid != gate_uid]
        hooks["nat-output"] = HookState(tuple(enumerate(jumps)), ((CHAIN_TLS, tuple(local)),))
    # Never an open proxy: the listeners take redirected connections only (they listen on the
    # wildcard addresses, since a redirect in PREROUTING targets the incoming interface's address).
    guard = ("-p tcp -m tcp --dport %s -m conntrack ! --ctstate DNAT %s -j DROP"
             % (listener_ports(policy), _comment("tls gate: redirected connections only")),)
    hooks["filter-input"] = HookState(((0, "-j " + CHAIN_TLS_IN),), ((CHAIN_TLS_IN, guard),))
    return hooks


def _persistent_body(hook, state):
    """(chain declarations, rules) of one hook's part of a persistent table."""
    declare = [":%s - [0:0]" % name for name, rules in state.chains]
    lines = ["-A %s %s" % (HOOKS[hook], spec) for index, spec in sorted(state.jumps)]
    for name, rules in state.chains:
        lines.extend("-A %s %s" % (name, spec) for spec in rules)
    return declare, lines


def _hook_table_persistent(table, hooks):
    """A complete `table` holding only what we manage (None when we manage nothing there).

    hooks: {hook name: HookState} of every hook of this table."""
    parts = [_persistent_body(hook, hooks[hook]) for hook in sorted(hooks) if hooks[hook].jumps or hooks[hook].chains]
    if not parts:
        return None
    lines = ["*" + table]
    lines.extend(":%s ACCEPT [0:0]" % chain for chain in TABLE_CHAINS[table])
    for declare, rules in parts:
        lines.extend(declare)
    for declare, rules in parts:
        lines.extend(rules)
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def hook_transaction_body(table, current, desired, foreign_rules):
    """The --noflush lines turning our part of hook `table` (a HOOKS name) from `current` into
    `desired` (None when equal), to go in its table's section (merge_section) with the table's other
    hooks: one commit per table."""
    if current == desired:
        return None
    return _transaction_body(HOOKS[table], current, desired, foreign_rules)


def _transaction_body(hook, current, desired, foreign_rules):
    """The lines of one hook's transaction (the filter table's OUTPUT is one more hook): our chains
    declared (which flushes them under --noflush) and refilled, our jumps deleted and inserted at
    their index (clamped: the hook may hold fewer foreign rules now than when `desired` was
    recorded), obsolete chains removed; every other chain and rule is left alone."""
    lines = []
    desired_names = [name for name, rules in desired.chains]
    obsolete = [name for name, rules in current.chains if name not in desired_names]
    lines.extend(":%s - [0:0]" % name for name in desired_names + obsolete)
    if current.jumps != desired.jumps:
        lines.extend("-D %s %s" % (hook, spec) for index, spec in current.jumps)
        for inserted, (index, spec) in enumerate(sorted(desired.jumps)):
            lines.append("-I %s %d %s" % (hook, min(index, foreign_rules + inserted) + 1, spec))
    for name, rules in desired.chains:
        lines.extend("-A %s %s" % (name, spec) for spec in rules)
    lines.extend("-X %s" % name for name in obsolete)
    return lines


def render_persistent(state, policies, hooks=None):
    """Complete tables holding only what we manage, for plain iptables-restore at boot: filter,
    and mangle/nat where we hook into them (hooks: {table: HookState}).

    policies gives the live INPUT/FORWARD policies so that booting does not change them.
    """
    hooks = hooks or {}
    filter_hooks = [hook for hook in sorted(hooks) if HOOK_TABLES[hook] == "filter"]
    lines = ["*filter"]
    for chain in BUILTIN_FILTER_CHAINS:
        verdict = state.policy if chain == "OUTPUT" else policies.get(chain, "ACCEPT")
        lines.append(":%s %s [0:0]" % (chain, verdict))
    lines.extend(":%s - [0:0]" % name for name, rules in state.chains)
    parts = [_persistent_body(hook, hooks[hook]) for hook in filter_hooks]
    for declare, rules in parts:
        lines.extend(declare)
    lines.extend("-A OUTPUT %s" % spec for index, spec in sorted(state.jumps))
    for name, rules in state.chains:
        lines.extend("-A %s %s" % (name, spec) for spec in rules)
    for declare, rules in parts:
        lines.extend(rules)
    lines.append("COMMIT")
    text = "\n".join(lines) + "\n"
    for table in sorted(set(HOOK_TABLES[hook] for hook in hooks) - {"filter"}):
        text += _hook_table_persistent(table, dict((h, hooks[h]) for h in hooks if HOOK_TABLES[h] == table)) or ""
    return text


def render_transaction(current, desired, foreign_output_rules, extra=None):
    """iptables-restore --noflush payload that turns our part of the filter table from `current` into
    `desired` (ManagedStates: the OUTPUT hook and its policy) in one commit (_transaction_body).
    Returns None when nothing differs.
    extra: lines of other hooks of the filter table (hook_transaction_body), in the same commit.
    """
    if current == desired and not extra:
        return None
    if current == desired:
        return merge_section("filter", [extra])
    # No counters: the policy changes, the OUTPUT counters are kept.
    lines = [":OUTPUT %s" % desired.policy] if current.policy != desired.policy else []
    lines.extend(_transaction_body("OUTPUT", current, desired, foreign_output_rules))
    return merge_section("filter", [lines] + ([extra] if extra else []))


def merge_section(table, bodies):
    """One "*table ... COMMIT" section from several hooks' lines: every chain declaration (and the
    policy line) first, then the rest in order, so the whole table changes in one commit."""
    declare = [line for body in bodies for line in body if line.startswith(":")]
    rest = [line for body in bodies for line in body if not line.startswith(":")]
    return "\n".join(["*" + table] + declare + rest + ["COMMIT"]) + "\n"


def _maxelem(count):
    size = 65536
    while size < count * 2:
        size *= 2
    return size


def _create(name, ipset, count):
    maxelem = ipset.options.get("maxelem") or _maxelem(count)
    text = "create %s %s family %s hashsize 1024 maxelem %s" % (name, ipset.settype, ipset.family, maxelem)
    if ipset.options.get("timeout"):
        text += " timeout %s" % ipset.options["timeout"]
    if ipset.options.get("counters"):
        text += " counters"
    return text


def render_sets_persistent(sets):
    """`ipset restore` text creating and filling our sets (for boot-time persistence)."""
    lines = []
    for name in sorted(sets):
        ipset = sets[name]
        lines.append(_create(name, ipset, len(ipset.members)))
        lines.extend("add %s %s" % (name, member) for member in ipset.members)
    return "\n".join(lines) + "\n" if lines else ""


def sets_equal(current, desired):
    """Same type, family and timeout; members too, unless the set is dynamic (has a timeout)."""
    if (current.settype, current.family, current.options.get("timeout")) != \
            (desired.settype, desired.family, desired.options.get("timeout")):
        return False
    # Options only the recorder's sets state (their bound and counters): compared when stated.
    for option in ("maxelem", "counters"):
        if option in desired.options and current.options.get(option) != desired.options[option]:
            return False
    return bool(desired.options.get("timeout")) or tuple(current.members) == tuple(desired.members)


def temp_set_name(name):
    # Same length budget as our names (31): "agt" + family digit + "-" + label.
    return "agt" + name[2:]


def render_sets_update(current, desired):
    """ipset restore text that creates new sets and swaps in new contents of changed ones.

    Contents change atomically: a temporary set is filled, then swapped with the live one.
    Returns (text, created_names, changed_names).
    """
    lines = []
    created = []
    changed = []
    for name in sorted(desired):
        want = desired[name]
        have = current.get(name)
        if have is None:
            created.append(name)
            lines.append(_create(name, want, len(want.members)))
            lines.extend("add %s %s" % (name, m) for m in want.members)
        elif not sets_equal(have, want):
            changed.append(name)
            temp = temp_set_name(name)
            lines.append(_create(temp, want, len(want.members)))
            lines.extend("add %s %s" % (temp, m) for m in want.members)
            lines.append("swap %s %s" % (temp, name))
            lines.append("destroy %s" % temp)
    return ("\n".join(lines) + "\n" if lines else ""), created, changed


def render_sets_destroy(names):
    return "".join("destroy %s\n" % name for name in sorted(names))
