# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Parse iptables-save / ip6tables-save / ipset save output and extract what we manage.

Private to agentguard.hardening. Works on text only, so it is tested with real
output captured from the nf_tables and legacy backends (tests/unit/fixtures).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress
import re
from collections import namedtuple

CHAIN_PREFIX = "AGENTGUARD-"
SET_PREFIXES = {"ipv4": "ag4-", "ipv6": "ag6-"}
# Temporary sets used to swap new contents in atomically.
TEMP_SET_PREFIXES = ("agt4-", "agt6-")
BUILTIN_FILTER_CHAINS = ("INPUT", "FORWARD", "OUTPUT")
# Set types whose members are addresses or networks; others (the recorder's hash:ip,port) keep theirs as text.
NETWORK_SET_TYPES = ("hash:net", "hash:ip")
KEYED_OPTIONS = ("family", "hashsize", "maxelem", "timeout", "bucketsize", "initval", "netmask", "markmask", "size")

Table = namedtuple("Table", ["name", "chains", "rules"])
"""chains: list of (name, policy) in file order (policy "-" for user chains);
rules: list of (chain, spec) where spec is the text after "-A CHAIN "."""

ManagedState = namedtuple("ManagedState", ["policy", "jumps", "chains"])
"""What the module owns in one family's filter table.

policy: the OUTPUT policy ("ACCEPT"/"DROP").
jumps: tuple of (index, spec): OUTPUT rules whose target is one of our chains,
       with their 0-based position among all OUTPUT rules.
chains: tuple of (chain, (spec, ...)) sorted by chain name.
"""

Live = namedtuple("Live", ["managed", "policies", "foreign_output_rules", "tracking", "hooks"])
"""managed: ManagedState; policies: {builtin chain: policy}; foreign_output_rules: count;
tracking: whether a rule of the filter table (ours or not) needs connection tracking;
hooks: {table: LiveHook} for the other tables we hook into (HOOKS)."""
Live.__new__.__defaults__ = ({},)

HookState = namedtuple("HookState", ["jumps", "chains"])
"""What the module owns in one table besides filter: jumps (index, spec) in the table's hook chain
(HOOKS[table]) to our chains, and chains ((chain, (spec, ...)), ...) sorted by name."""

LiveHook = namedtuple("LiveHook", ["managed", "foreign_rules"])
"""managed: HookState; foreign_rules: how many rules of the hook chain are not ours."""

# Forwarded traffic is judged in mangle FORWARD, which runs before every filter-table FORWARD rule
# (Docker's, netavark's, libvirt's), so no runtime can outrank it; in filtering DNS mode, DNS from
# the container networks is redirected to the local resolver in nat PREROUTING, and so are TLS
# connections to the TLS gate. The gate adds two hooks: local TLS connections redirected in nat
# OUTPUT, and connections to its listeners that were not redirected dropped in filter INPUT.
# Keys are hook names (the table, or table-chain where a table has a second hook), values the
# builtin chain holding our jumps.
HOOKS = {"mangle": "FORWARD", "nat": "PREROUTING", "nat-output": "OUTPUT", "filter-input": "INPUT"}
HOOK_TABLES = {"mangle": "mangle", "nat": "nat", "nat-output": "nat", "filter-input": "filter"}
# The chains of a hook that is not the first in its table; the table's first hook (the filter
# table's OUTPUT, ManagedState) owns every other chain of ours there.
HOOK_CHAINS = {"nat-output": ("AGENTGUARD-TLS",), "filter-input": ("AGENTGUARD-TLS-IN",)}
EMPTY_HOOK = HookState((), ())


def hook_of_chain(table, chain):
    """The hook name owning our chain `chain` of `table` (None: the filter table's ManagedState)."""
    for hook, chains in HOOK_CHAINS.items():
        if HOOK_TABLES[hook] == table and chain in chains:
            return hook
    return None if table == "filter" else table


# Matches that make the kernel track connections in the rule's network namespace and family.
TRACKING_MATCHES = ("conntrack", "state")

IpSet = namedtuple("IpSet", ["name", "settype", "family", "options", "members"])
"""members: tuple of canonical network strings, sorted."""


class ParseError(Exception):
    pass


# Protocols the module names that iptables-save prints by number where /etc/protocols lacks them (Debian 13's
# images without netbase print "-p 2" for the "-p igmp" the module loads): read back as the module writes them.
PROTOCOL_NAMES = {"2": "igmp"}
_PROTOCOL_NUMBER = re.compile(r"(^| )-p (\d+)(?= |$)")


def _protocol_by_name(spec):
    if "-p " not in spec:
        return spec
    return _PROTOCOL_NUMBER.sub(lambda m: "%s-p %s" % (m.group(1), PROTOCOL_NAMES.get(m.group(2), m.group(2))), spec)


def parse_save(text, counters=None):
    """Parse iptables-save output into {table name: Table}. Counters and comments are dropped, but
    with a list `counters`, each rule that has them (`iptables-save -c`) appends (table, chain, spec,
    packets, bytes) to it (the exact counts of _metrics)."""
    tables = {}
    current = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        counted = None
        if line.startswith("[") and "] " in line:
            counted, line = line[1:].split("] ", 1)  # iptables-save -c rule counters
        if line.startswith("*"):
            if current is not None:
                raise ParseError("line %d: table %s starts before COMMIT of %s" % (number, line[1:], current.name))
            current = Table(line[1:], [], [])
        elif current is None:
            raise ParseError("line %d: %r is outside a table" % (number, raw))
        elif line == "COMMIT":
            tables[current.name] = current
            current = None
        elif line.startswith(":"):
            parts = line[1:].split()
            if len(parts) < 2:
                raise ParseError("line %d: bad chain line %r" % (number, raw))
            current.chains.append((parts[0], parts[1]))
        elif line.startswith("-A "):
            parts = line.split(None, 2)
            if len(parts) < 2:
                raise ParseError("line %d: bad rule line %r" % (number, raw))
            current.rules.append((parts[1], _protocol_by_name(parts[2]) if len(parts) > 2 else ""))
            if counted is not None and counters is not None:
                try:
                    packets, size = (int(n) for n in counted.split(":"))
                except ValueError:
                    raise ParseError("line %d: bad counters in %r" % (number, raw))
                counters.append((current.name, parts[1], current.rules[-1][1], packets, size))
        else:
            raise ParseError("line %d: unexpected %r" % (number, raw))
    if current is not None:
        raise ParseError("table %s has no COMMIT" % current.name)
    return tables


def render_table(table):
    """Render a Table back to iptables-save text (without counters)."""
    lines = ["*%s" % table.name]
    lines.extend(":%s %s [0:0]" % (name, policy) for name, policy in table.chains)
    lines.extend(("-A %s %s" % (chain, spec)).rstrip() for chain, spec in table.rules)
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def jump_target(spec):
    """The -j/-g target of a rule spec, or None."""
    words = spec.split()
    for flag in ("-j", "-g"):
        if flag in words:
            index = words.index(flag)
            if index + 1 < len(words):
                return words[index + 1]
    return None


def is_managed_chain(name):
    return name.startswith(CHAIN_PREFIX)


def _owned(table, hook, owner=None):
    """(jumps, chains, foreign): our jumps in `hook` with their index among all its rules, our chains'
    rules by chain name (those hook_of_chain gives to `owner`), and the number of hook rules that
    are not ours."""
    chains = dict((name, []) for name, policy in table.chains
                  if is_managed_chain(name) and hook_of_chain(table.name, name) == owner)
    jumps = []
    foreign = 0
    index = 0
    for chain, spec in table.rules:
        if chain in chains:
            chains[chain].append(spec)
        elif chain == hook:
            target = jump_target(spec)
            if target is not None and is_managed_chain(target):
                jumps.append((index, spec))
            else:
                foreign += 1
            index += 1
    return tuple(jumps), tuple((name, tuple(chains[name])) for name in sorted(chains)), foreign


def live_hooks(tables):
    """{table: LiveHook} for the tables of HOOKS; a table that is not loaded owns nothing."""
    hooks = {}
    for name in sorted(HOOKS):
        table = tables.get(HOOK_TABLES[name])
        if table is None:
            hooks[name] = LiveHook(EMPTY_HOOK, 0)
            continue
        jumps, chains, foreign = _owned(table, HOOKS[name], name)
        hooks[name] = LiveHook(HookState(jumps, chains), foreign)
    return hooks


def live_state(save_text):
    """Extract the Live view from iptables-save output (the filter table, and the HOOKS tables)."""
    tables = parse_save(save_text)
    table = tables.get("filter")
    hooks = live_hooks(tables)
    if table is None:
        # Legacy backend with the filter table never loaded: everything is ACCEPT and empty.
        return Live(ManagedState("ACCEPT", (), ()), dict((c, "ACCEPT") for c in BUILTIN_FILTER_CHAINS), 0, False, hooks)
    policies = dict((name, policy) for name, policy in table.chains if name in BUILTIN_FILTER_CHAINS)
    for chain in BUILTIN_FILTER_CHAINS:
        policies.setdefault(chain, "ACCEPT")
    jumps, chains, foreign = _owned(table, "OUTPUT")
    managed = ManagedState(policies["OUTPUT"], jumps, chains)
    tracking = any(uses_tracking(spec) for chain, spec in table.rules)
    return Live(managed, policies, foreign, tracking, hooks)


def uses_tracking(spec):
    """Whether a rule spec loads a match that needs connection tracking (conntrack, or legacy state).

    Tracking starts in a namespace only once such a rule exists. A connection opened before is
    picked up by its next packet with state NEW, so the caller must not enforce a policy on it yet.
    """
    words = spec.split()
    return any(words[i] == "-m" and words[i + 1] in TRACKING_MATCHES for i in range(len(words) - 1))


# Parsed networks and their canonical text, by the text they were parsed from: one run meets each
# address of the policy several times (validation, resolution, sorting, rendering, the live rules), and
# ipaddress is most of the plan's cost at thousands of addresses (docs/benchmarks.md, apply cost).
# Bounded: the guard runs for months while set members come and go.
_NETWORKS = {}
_CANONICAL = {}
_CACHE_MAX = 1 << 16


def remember(text, net):
    """Keep net (an ip_network parsed from text, strictly or not) for network_of() and canonical();
    returns its canonical text."""
    if len(_NETWORKS) >= _CACHE_MAX:
        _NETWORKS.clear()
        _CANONICAL.clear()
    canonical_text = _CANONICAL.get(text) or str(net)
    for key in (text, canonical_text):
        _NETWORKS[key] = net
        _CANONICAL[key] = canonical_text
    return canonical_text


def network_of(text):
    """ipaddress.ip_network(text, strict=False), parsed once per text; ValueError as ipaddress raises it."""
    net = _NETWORKS.get(text)
    if net is None:
        net = ipaddress.ip_network(text, strict=False)
        remember(text, net)
    return net


def canonical(text):
    """str(network_of(text)): the canonical "address/prefix" text, computed once per text."""
    canonical_text = _CANONICAL.get(text)
    if canonical_text is None:
        network_of(text)
        canonical_text = _CANONICAL[text]
    return canonical_text


def canonical_member(text):
    return canonical(text.strip())


def parse_ipset_save(text, prefixes=tuple(SET_PREFIXES.values()) + TEMP_SET_PREFIXES):
    """Parse `ipset save` output; return {name: IpSet} for the sets whose name has one of prefixes.

    Volatile creation options (initval, bucketsize, hashsize) are kept in options
    but never compared, since the kernel picks them.
    """
    sets = {}
    members = {}
    for number, raw in enumerate(text.splitlines(), 1):
        words = raw.split()
        if not words:
            continue
        if words[0] == "create" and len(words) >= 3:
            name = words[1]
            if not name.startswith(prefixes):
                continue
            opts = words[3:]
            options = {}
            i = 0
            while i < len(opts):
                if opts[i] in KEYED_OPTIONS and i + 1 < len(opts):
                    options[opts[i]] = opts[i + 1]
                    i += 2
                else:
                    options[opts[i]] = True
                    i += 1
            sets[name] = (words[2], options.get("family", "inet"), options)
            members[name] = []
        elif words[0] == "add" and len(words) >= 3:
            if words[1] in members:
                if sets[words[1]][0] not in NETWORK_SET_TYPES:
                    # The recorder's hash:ip,port entries ("192.0.2.1,tcp:443"): kept as written.
                    members[words[1]].append(words[2])
                    continue
                try:
                    members[words[1]].append(canonical_member(words[2]))
                except ValueError:
                    raise ParseError("ipset line %d: bad member %r" % (number, raw))
        elif words[0] in ("create", "add"):
            raise ParseError("ipset line %d: unexpected %r" % (number, raw))
    result = {}
    for name, (settype, family, options) in sets.items():
        entries = sort_networks(members[name]) if settype in NETWORK_SET_TYPES else sorted(members[name])
        result[name] = IpSet(name, settype, family, options, tuple(entries))
    return result


def sort_networks(networks):
    """The canonical texts of networks, deduplicated, by family, then address, then prefix length."""
    unique = dict((canonical(n), None) for n in networks)
    return sorted(unique, key=lambda text: _sort_key(network_of(text)))


def _sort_key(net):
    return (net.version, net.network_address, net.prefixlen)
