#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: egress_rules
short_description: Enforce an outbound (egress) allowlist with iptables, ip6tables and ipset
version_added: 0.1.0
description:
  - Denies all outbound traffic except loopback, replies of established connections, DNS to the
    trusted resolvers in O(dns_servers), and NEW connections to the destinations in O(allow).
    Every denied attempt is logged with a rate limit and the sender's uid.
  - Names in O(allow) are resolved through O(dns_servers) directly (A and AAAA, with dnspython),
    never through the system resolver. Identical answers give identical rules.
  - IPv4 and IPv6 are always handled together. A family left out of O(families) is not opened,
    but it is still locked down, so IPv6 egress cannot stay open by omission.
  - The module owns the chains C(AGENTGUARD-EGRESS), C(AGENTGUARD-ALLOW) and C(AGENTGUARD-DENY), the
    jump to C(AGENTGUARD-EGRESS) as the first rule of C(OUTPUT), the C(OUTPUT) policy, and the ipsets
    named C(ag4-*) and C(ag6-*). It never touches any other chain, rule or set (Docker, fail2ban, your own).
  - It reads the live state with C(iptables-save), C(ip6tables-save) and C(ipset save), computes the
    exact changes, tests every payload with C(iptables-restore --test), then applies each family in
    one C(iptables-restore --noflush --wait) transaction. If a later step fails, what was already
    applied is put back, so a failure leaves the host as it was.
  - With O(scope_networks), NEW connections FORWARDED from container or VM networks (Docker, podman,
    libvirt, Kubernetes bridges) are held to the same allowlist. They are judged in the C(mangle)
    table's C(FORWARD) chain (first rule, a jump to C(AGENTGUARD-FORWARD)), which the kernel runs before
    every C(filter) table C(FORWARD) rule, so Docker's C(DOCKER-USER) and isolation chains, netavark's
    chains and their restarts can neither outrank nor remove it.
  - Rules land in whichever backend the C(iptables) alternatives select (nf_tables or legacy).
  - With O(tls_gate), restricted NEW TCP connections to the TLS ports of allowlisted names are redirected
    (C(nat) table, chains C(AGENTGUARD-TLS) for local processes and C(AGENTGUARD-TLS-FWD) for O(scope_networks))
    to a local TLS gate (nginx stream with C(ssl_preread), run by the role C(agentguard.hardening.egress)
    from RV(tls_gate)). It passes a connection only when its server name (SNI) is allowlisted, and then
    connects only to that name's own addresses, never to the address the client chose. Each redirect is
    logged first (prefix C([EGRESS-TLS] ), uid or container address, original destination, same rate limit
    as denials), so a refusal in the gate's log can be joined to its sender. Connections to the gate's
    listeners that were not redirected are dropped (C(filter) table, chain C(AGENTGUARD-TLS-IN)), so the
    gate is never an open proxy. The gate cannot stop domain fronting (the allowed name in the SNI, another
    in the encrypted Host header) nor see data sent to the allowed name itself.
author:
  - agentguard.hardening developers (@agentguard)
requirements:
  - iptables and ip6tables (nf_tables or legacy backend)
  - ipset (for a destination with more than 8 addresses in a family)
  - dnspython on the target (Debian C(python3-dnspython)) for names in O(allow)
attributes:
  check_mode:
    support: full
    description: Computes and reports every change, including the resolved addresses, and changes nothing.
  diff_mode:
    support: full
    description: Returns the managed rules and sets before and after, in C(iptables-save) notation.
  idempotent:
    support: full
    description: A second run with the same options and the same DNS answers reports no change.
  platform:
    support: full
    platforms: posix
    description: Linux hosts with netfilter.
options:
  allow:
    description:
      - The destinations that may receive NEW connections.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description:
          - "A label for the destination, unique in the list. It names the rules (comment
            C(agentguard: <name>)) and the ipsets (C(ag4-<name>), C(ag6-<name>))."
          - 1 to 26 characters; letters, digits, C(_), C(.), C(-); starting with a letter or digit.
        type: str
        required: true
      host:
        description:
          - A DNS name (resolved through O(dns_servers)), an IPv4 or IPv6 address, or a CIDR network.
          - Or a list of IPv4 and IPv6 addresses and CIDR networks (not names; a repeat counts once), one destination
            under one label, matched like a name's addresses (one rule per port and family, through the sets
            C(ag4-<name>) and C(ag6-<name>) above 8 addresses in a family). For many literal addresses on the same
            ports, one entry with a list costs less to apply and to match than an entry per address.
        type: raw
        required: true
      ports:
        description:
          - Destination ports; a port is a number from 1 to 65535 or a range such as C("8000-8010").
        type: list
        elements: raw
        default: [443]
      protocol:
        description: Transport protocol.
        type: str
        choices: [tcp, udp]
        default: tcp
      subdomains:
        description:
          - With O(dns_mode=filtering), whether names below O(allow[].host) resolve too. Only
            meaningful for names; the module itself records it for the resolver's configuration.
        type: bool
        default: false
      tls:
        description:
          - Which TCP ports of this destination the TLS gate covers when O(tls_gate) is not V(off). Unset, its
            port 443 if it has it; V(true), every port (single ports, TCP only); V(false), none.
          - The gate checks server names, so with the gate on V(true) on an address or CIDR fails; unset on
            such an entry with port 443 leaves it ungated and the plan says so (C(ungated) of RV(tls_gate)).
          - An entry with O(allow[].users) is not gated (V(true) fails).
        type: bool
      users:
        description:
          - User names or numeric uids; only their processes may connect to this destination (an owner
            match on the allow rule), whatever O(scope) says. For the host's own services (C(_apt) to the
            package mirror, C(_chrony) to the time servers), so a compromised agent cannot use the way out
            they need. Names must exist on the host.
          - Such a destination is never opened to O(scope_networks) (a forwarded packet has no owner).
        type: list
        elements: str
  dhcp:
    description:
      - Let DHCP clients renew their leases, like neighbour discovery also in a family not in O(families);
        DHCPv4 from client port 68 to server port 67, DHCPv6 from port 546 to port 547 of the
        All_DHCP_Relay_Agents_and_Servers group C(ff02::1:2) and of link-local servers, nothing wider. Only
        privileged processes can send from these ports.
      - V(false) closes them. A host with static addresses needs none, and on a host that needs them a lease
        ends (an IPv6 address, or the IPv4 one, is lost) when it cannot be renewed.
      - DHCPv4 clients send their first request and their broadcast rebinding through a packet socket that
        no C(OUTPUT) rule sees, so V(false) cannot stop a DHCPv4 client (it stops its unicast renewals only);
        it does stop DHCPv6, which always goes through a UDP socket.
    type: bool
    default: true
  dns_servers:
    description:
      - IPv4 or IPv6 addresses of the trusted resolvers. They are the only DNS destinations the host
        may reach (UDP and TCP 53), and the servers this module asks to resolve O(allow).
      - Required in O(mode=enforce) with O(state=present).
      - When you replace every resolver at once on a hardened host, the module cannot reach the new
        ones yet; add the new resolver first, then remove the old one in a second run.
    type: list
    elements: str
    default: []
  log_prefix:
    description: Prefix of the kernel log line written for each denied attempt (at most 29 characters).
    type: str
    default: "[EGRESS-DENIED] "
  log_limit:
    description:
      - Average rate of log lines, such as C(10/minute) (units second, minute, hour, day).
        The limit applies to logging only, never to the deny.
    type: str
    default: 10/minute
  log_burst:
    description: Log lines allowed in a burst before O(log_limit) applies (1 to 10000).
    type: int
    default: 20
  deny_action:
    description:
      - V(drop) silently discards denied packets; V(reject) answers with a TCP reset or an ICMP
        administratively-prohibited error, so the agent fails fast instead of timing out.
    type: str
    choices: [drop, reject]
    default: drop
  mode:
    description:
      - V(enforce) denies what is not allowed. V(audit) logs what would be denied and lets it pass,
        to learn a policy before enforcing it; the OUTPUT policy stays ACCEPT.
    type: str
    choices: [enforce, audit]
    default: enforce
  scope:
    description:
      - V(host) restricts every process and sets the OUTPUT policy to DROP. V(users) restricts only
        the processes of O(users); every other user's traffic is left untouched.
      - V(none) restricts no local process (the module then manages nothing in the C(filter) table); it
        needs O(scope_networks), for a host whose own processes are trusted but whose containers are not.
    type: str
    choices: [host, users, none]
    default: host
  scope_networks:
    description:
      - Container and VM networks on this host whose forwarded traffic gets the same allowlist; every NEW
        connection that enters from one of them may reach only the allowed destinations and, in
        O(dns_mode=pinned), the trusted resolvers. Replies pass, and so does traffic to another network of
        this list (the runtime's own isolation rules still decide it). Denials are logged with the same
        prefix and rate limit, the container's source address standing in for the uid, and are always
        dropped (C(REJECT) does not exist in the C(mangle) table).
      - Each element is an interface name, with the iptables wildcard C(+) at its end (V(docker0),
        V(br-+), V(podman+), V(cni0), V(virbr+)), or an IPv4 or IPv6 network in CIDR notation (it then
        applies to its family only).
      - 'Between covered networks means: out of an interface that an interface element matches, or to an address
        inside a CIDR element. So that this never opens the way out, the module refuses (check mode too, nothing
        changed), naming the element and the interface, any element that reaches a way out of the host: an
        interface that carries a default route, the route to one of the policy''s destinations (its allowed
        addresses and O(dns_servers); not a container bridge holding one), or a port of the host''s LAN (a physical device, or a VLAN, bond or bridge on
        one). An interface element must not match one (the uplink C(eth0) under V(e+)); a CIDR element must not
        contain an address the host routes out of one, by the longest matching route (V(172.16.0.0/12) with only
        C(docker0)''s V(172.17.0.0/16): its other addresses go out by the default route). The routes and links are
        read on every run (C(ip route show table all) of both families, C(ip -d addr show)); an interface or route
        that appears after a run is checked at the next run. A tunnel (a VPN) without a default route and without
        the route to a destination of the policy is not a way out by this definition: do not name one.'
      - With O(dns_mode=filtering), DNS (UDP and TCP 53) from these networks is redirected to the local
        filtering resolver (C(nat) table, chain C(AGENTGUARD-DNS)), which must listen on their interfaces.
      - Traffic from containers to the host itself (C(INPUT)) is not filtered by this module.
    type: list
    elements: str
    default: []
  users:
    description:
      - User names or numeric uids whose egress is restricted, with O(scope=users). Names must exist on
        the host; uids are taken as given.
    type: list
    elements: str
    default: []
  families:
    description:
      - Address families in which O(allow) and O(dns_servers) are opened. A family not listed is still
        locked down (loopback, replies and IPv6 neighbour discovery only).
      - On a kernel without IPv6 the ipv6 family is skipped with a warning, as there is nothing to filter.
    type: list
    elements: str
    choices: [ipv4, ipv6]
    default: [ipv4, ipv6]
  state:
    description:
      - V(present) enforces the allowlist. V(absent) removes every chain, jump and set this module
        manages and sets the OUTPUT policy back to ACCEPT.
    type: str
    choices: [present, absent]
    default: present
  dns_mode:
    description:
      - V(pinned) opens DNS to O(dns_servers) for every restricted process and pins each name to the
        addresses it resolved to during this run.
      - V(filtering) is for a host whose only resolver is a local filtering resolver (dnsmasq, run by the
        role C(agentguard.hardening.egress)) that answers allowlisted names only and adds their addresses to
        the sets C(ag4-<name>)/C(ag6-<name>), which have a timeout of O(dns_set_timeout). Only
        O(dns_resolver_user) may then send DNS to O(dns_servers); everyone else asks the local resolver over
        loopback. This run's resolution seeds the sets, so a destination works before its first lookup.
    type: str
    choices: [pinned, filtering]
    default: pinned
  dns_resolver_user:
    description:
      - With O(dns_mode=filtering), the user the local resolver runs as; required then, and it must exist.
        Only this user's DNS may leave the host, so give the resolver a user of its own (the role uses
        C(agentguard-dns)), not a distribution's C(dnsmasq) user that another dnsmasq may run as.
    type: str
  dns_set_timeout:
    description:
      - With O(dns_mode=filtering), seconds an address stays in a destination's set after the resolver's
        last answer that carried it (20 to 2147483). Configure the resolver never to hand out or cache
        an answer longer than this (the role sets dnsmasq's C(max-ttl) and C(max-cache-ttl) to half of it), so an
        address stays allowed for as long as any client may use the answer, and a short TTL never cuts a
        connection (established connections pass by conntrack anyway).
    type: int
    default: 300
  learn:
    description:
      - Record every distinct destination that reaches the deny rules (in O(mode=audit), what would be
        denied; in O(mode=enforce), what was), exactly, alongside the rate-limited log line, in a
        C(hash:ip,port) set with counters and a timeout per family, C(ag4-_learn)/C(ag6-_learn) for the
        host's processes, C(ag4-_learn-u<uid>) for each restricted user and each of O(learn_users), and
        C(ag4-_learn-fwd) for traffic forwarded from O(scope_networks). A rule in the chain
        C(AGENTGUARD-LEARN) (C(AGENTGUARD-FWD-DENY) for forwarded traffic) counts each further packet
        to a recorded destination with a set match; an entry's count is its packets (connection attempts,
        since established traffic never reaches the deny rules), and it expires O(learn_timeout)
        seconds after its first packet.
      - The sets are the module's, their members are not (they are never compared, reported as drift
        or emptied by a later run); changing O(learn_maxelem) or O(learn_timeout) recreates the sets
        empty. A full set refuses new destinations (the log line still samples them);
        M(agentguard.hardening.egress_learned) reports it as C(full).
      - Read the sets with M(agentguard.hardening.egress_learned) and the playbook
        C(agentguard.hardening.egress_learn).
    type: bool
    default: false
  learn_users:
    description:
      - With O(learn), users (names or uids) whose destinations are recorded in a set of their own, so a
        proposal can say which user needed a destination. The restricted users (O(scope=users)) always are.
    type: list
    elements: str
    default: []
  learn_maxelem:
    description: With O(learn), how many destinations each recorder set holds at most (1 to 2147483648).
    type: int
    default: 65536
  learn_timeout:
    description:
      - With O(learn), seconds a recorded destination stays in its set after its first packet (1 to 2147483);
        a later packet counts but does not extend it (an ipset add that extends an entry resets its counters).
    type: int
    default: 604800
  resolvers:
    description:
      - The servers this module asks to resolve O(allow). Defaults to O(dns_servers). With
        O(dns_mode=filtering) pass the local resolver (V(127.0.0.1)), since only its user may reach the upstream
        servers, and asking it also fills the sets.
    type: list
    elements: str
    default: []
  tls_gate:
    description:
      - V(enforce) redirects every restricted NEW TCP connection to a gated destination (see O(allow[].tls))
        to the TLS gate, which lets it through only with an allowlisted server name, to that name's own
        addresses. V(audit) redirects the same way; the gate also passes names not on the list (logging
        them C(would-refuse-sni)) to what the resolver answers for them. With O(dns_mode=filtering) that
        resolver is the filtering one, which answers no name that is not on the list, so audit then refuses
        such names too (logged C(would-refuse-sni) with a status other than 200, which the log readers
        count as a refusal); audit a new policy's names in pinned mode. A connection without a server
        name, with an IP literal, or that is not TLS is refused in both modes, since the gate cannot know
        where it was going.
      - V(off) adds no gate rules (and removes them).
      - The gate itself is run by the role C(agentguard.hardening.egress); this module writes the rules and
        returns RV(tls_gate), from which the role renders the gate's configuration.
    type: str
    choices: ['off', audit, enforce]
    default: 'off'
  tls_gate_user:
    description:
      - The user the TLS gate runs as; required when O(tls_gate) is not V(off), and it must exist. Its
        connections are not redirected; they are still held to the allowlist (with O(scope=users) or
        O(scope=none) it is restricted like O(users)). Not root, not O(dns_resolver_user), not one of O(users).
    type: str
  tls_gate_port:
    description:
      - The gate's first listener port (1024 to 65535). Listener i serves the i-th gated destination port in
        ascending order on O(tls_gate_port) + i.
    type: int
    default: 10443
  state_dir:
    description:
      - Where the module keeps what the on-host guard (C(agentguard-guard.service), installed by the role
        C(agentguard.hardening.egress)) holds the host to. With it, an apply takes the lock C(lock) in
        this directory (shared with the role's rollback script and the guard) and leaves the marker
        C(applying) while it runs, and a successful apply writes our part of the rules and sets as
        C(desired.json) (removed with O(state=absent)). A host whose C(desired.json) differs from the
        plan is changed (RV(desired_state_changed)).
      - Unset, nothing is written there and no lock is taken.
    type: path
  resolve_timeout:
    description: Seconds to wait for one DNS answer from one resolver (0.1 to 30).
    type: float
    default: 3.0
  resolve_retries:
    description: Extra attempts for a query that timed out or failed, not for NXDOMAIN (0 to 10).
    type: int
    default: 2
notes:
  - Denied packets of IPv6 neighbour discovery would break IPv6 entirely, so router and neighbour
    solicitations and neighbour advertisements with hop limit 255 (which never leave the link) are allowed.
  - Kernel log lines from a network namespace other than the initial one are only written when the
    sysctl C(net.netfilter.nf_log_all_netns) is 1.
  - Persisting the rules across reboots is the job of the role C(agentguard.hardening.egress), which
    writes the returned RV(rules) and RV(sets).
seealso:
  - module: community.general.iptables_state
  - module: ansible.builtin.iptables
"""

EXAMPLES = r"""
- name: Allow the inference API only, DNS only to one resolver, over IPv4 and IPv6
  agentguard.hardening.egress_rules:
    allow:
      - name: inference-api
        host: api.openclaw.security
        ports: [443]
    dns_servers: [1.1.1.1, "2606:4700:4700::1111"]

- name: Restrict only the agent's user, reject instead of drop, two destinations
  agentguard.hardening.egress_rules:
    scope: users
    users: [agent]
    deny_action: reject
    allow:
      - {name: inference-api, host: api.openclaw.security}
      - {name: currency-rates, host: openexchangerates.org, ports: [443]}
      - {name: metrics, host: 10.20.0.0/24, ports: ["9000-9010"], protocol: udp}
    dns_servers: [10.0.0.2]

- name: Learn first - log what would be denied, block nothing
  agentguard.hardening.egress_rules:
    mode: audit
    allow: [{name: inference-api, host: api.openclaw.security}]
    dns_servers: [10.0.0.2]

- name: Let TLS to the API through only with its own server name, to its own addresses
  agentguard.hardening.egress_rules:
    allow:
      - {name: inference-api, host: api.openclaw.security}
      - {name: status, host: 203.0.113.80, ports: [443], tls: false}
    dns_servers: [10.0.0.2]
    tls_gate: enforce
    tls_gate_user: agentguard-tlsgate

- name: Remove everything this module manages
  agentguard.hardening.egress_rules:
    state: absent
"""

RETURN = r"""
changes:
  description:
    - Per family, the managed lines added and removed, in C(iptables-save) notation
      (C(-P OUTPUT ...) for the policy, C(-I OUTPUT 1 ...) for the jump, C(ipset add ...) for set members).
  returned: always
  type: dict
  sample:
    ipv4:
      added:
        - "-P OUTPUT DROP"
        - >-
          -A AGENTGUARD-ALLOW -d 203.0.113.10/32 -p tcp -m tcp --dport 443 -m conntrack
          --ctstate NEW -m comment --comment "agentguard: inference-api" -j ACCEPT
      removed: ['-P OUTPUT ACCEPT']
    ipv6:
      added: []
      removed: []
resolved:
  description: Per destination label, the sorted IPv4 and IPv6 addresses (or networks) it was opened for.
  returned: when O(state=present)
  type: dict
  sample:
    inference-api:
      ipv4: [203.0.113.10]
      ipv6: ["2001:db8::10"]
rules:
  description:
    - Per family, a complete C(iptables-restore) payload with only what this module manages, one
      section per table it uses. C(filter) (the OUTPUT policy, its chains and jumps, the TLS gate's INPUT
      rules), C(mangle) when O(scope_networks) holds the forwarded traffic (FORWARD), and C(nat) for the
      TLS gate's redirects and, in filtering DNS mode, the redirect of the networks' DNS. It is what the
      role persists to C(/etc/iptables/rules.v4) and C(rules.v6); loading it at boot yields the enforced
      state.
    - Empty for a family that was skipped.
  returned: always
  type: dict
  sample:
    # One line each here (the real values are whole files, one rule per line).
    ipv4: "*filter :INPUT ACCEPT [0:0] :FORWARD ACCEPT [0:0] :OUTPUT DROP [0:0] ... COMMIT *nat ... COMMIT"
    ipv6: "*filter ... COMMIT"
sets:
  description: C(ipset restore) payload creating and filling the sets the rules use; empty when no set is used.
  returned: always
  type: str
  # One line here; the real value has one command per line.
  sample: "create ag4-cdn hash:net family inet hashsize 1024 maxelem 65536 ... add ag4-cdn 203.0.113.0/24"
tracking:
  description:
    - Per managed family, whether a rule of the live filter table already needed connection tracking
      before this run (a conntrack or state match, the module's own rules or anyone's).
    - When V(false), the kernel starts tracking only with the new rules, and a connection opened before
      (such as Ansible's control connection) is picked up by its next packet with state NEW. If the host
      sends that packet, an enforced policy drops it. The role therefore applies the policy in audit mode
      first when any family says V(false).
  returned: always
  type: dict
  sample:
    ipv4: false
    ipv6: false
networks:
  description:
    - The host's container and VM bridges (a bridge without a physical port, as C(ip -d addr) shows them),
      split by whether O(scope_networks) covers their forwarded traffic. A bridge is covered when an
      interface element matches its name, or when CIDR elements contain each of its networks.
    - C(uncovered) names what is left open, per bridge only the families (and networks) no element
      covers; it is returned in check mode too, so a plan says when containers would stay open.
  returned: when O(state=present)
  type: dict
  contains:
    covered:
      description: Bridges whose forwarded traffic is held to the allowlist, with the elements that cover them.
      type: list
      elements: dict
      sample: [{name: docker0, runtime: docker, by: [docker0]}]
    uncovered:
      description: Bridges (or families of them) whose forwarded traffic is not held to the allowlist.
      type: list
      elements: dict
      sample:
        - name: br-0123456789ab
          runtime: docker
          families: [ipv4]
          networks: [198.19.40.0/24]
          reason: br-0123456789ab (docker) forwards ipv4 traffic of 198.19.40.0/24 around the allowlist ...
  sample:
    covered: []
    uncovered: []
services:
  description:
    - The host's own services that need a way out and are running (time daemons, unattended-upgrades,
      DHCP clients, found by their processes), and those this policy leaves without one, each with what
      would give it one. Returned in check mode too.
    - A time daemon needs an O(allow) entry for UDP 123 or TCP 4460, unattended-upgrades one for TCP 80 or
      443 with C(users) naming C(_apt), a DHCP client O(dhcp). With O(scope=users) or O(scope=none), or
      O(mode=audit), the host's services are not restricted and nothing is blocked.
  returned: when O(state=present)
  type: dict
  contains:
    running:
      description: The services found.
      type: list
      elements: dict
      sample: [{name: chrony, kind: time}]
    blocked:
      description: The services without a way out, and what they need.
      type: list
      elements: dict
      sample: [{name: chrony, kind: time, needs: "an egress_allow entry for UDP 123 ..."}]
  sample:
    running: []
    blocked: []
tls_gate:
  description:
    - What the TLS gate must do, for the role to render its configuration; returned in check mode too.
    - C(listeners) maps each gated destination port to the gate's listener; C(names) are the allowlisted
      names with their gated ports and, in O(dns_mode=pinned), the addresses this run resolved (the only
      ones the gate connects to); in O(dns_mode=filtering) C(addresses) is empty (the gate asks the
      filtering resolver). C(ungated) lists entries with a TLS port that the gate does not cover, and why.
    - With O(tls_gate=off) or O(state=absent), mode V(off) and empty lists.
  returned: always
  type: dict
  sample:
    mode: enforce
    user: agentguard-tlsgate
    uid: 998
    listeners: [{port: 443, listen: 10443}]
    names: [{name: api.openclaw.security, subdomains: false, ports: [443], addresses: [203.0.113.10]}]
    ungated: [{entry: "egress_allow[1]", host: 10.20.0.0/24, ports: [443], reason: an address has no server name to check}]
desired_state_changed:
  description: Whether O(state_dir)'s C(desired.json) (what the guard holds the host to) differs from the plan
    (and was rewritten, except in check mode); false without O(state_dir).
  returned: always
  type: bool
  sample: false
families:
  description: The families that were managed (ipv6 is absent only on a kernel without IPv6).
  returned: always
  type: list
  elements: str
  sample: [ipv4, ipv6]
"""


import time

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.agentguard.hardening.plugins.module_utils._apply import ApplyError, apply_plan
from ansible_collections.agentguard.hardening.plugins.module_utils._desired import ApplyLock, GuardError, sync_desired
from ansible_collections.agentguard.hardening.plugins.module_utils._hostio import module_host
from ansible_collections.agentguard.hardening.plugins.module_utils._policy import ARGUMENT_SPEC
from ansible_collections.agentguard.hardening.plugins.module_utils._rules import RulesError, plan_rules


class _NoLock(object):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    state_dir = module.params["state_dir"]
    # Read, plan and apply under the lock the guard and the rollback share: nothing changes our part between.
    lock = ApplyLock(state_dir) if state_dir and not module.check_mode else _NoLock()
    try:
        with lock:
            run(module, state_dir)
    except GuardError as exc:
        module.fail_json(msg="%s; nothing was changed" % exc)


def run(module, state_dir):
    try:
        result, plan, nf = plan_rules(module.params, module_host(module), want_diff=module._diff)
    except RulesError as exc:
        if exc.missing_lib:
            module.fail_json(msg=missing_required_lib(str(exc)))
        module.fail_json(msg=str(exc), **exc.extra)
    if plan.changed and not module.check_mode:
        try:
            for warning in apply_plan(nf, plan):
                module.warn(warning)
        except ApplyError as exc:
            result["changed"] = bool(exc.rollback_errors)
            module.fail_json(msg=str(exc), rollback_errors=exc.rollback_errors, **result)
    if result["desired_state_changed"] and not module.check_mode:
        sync_desired(state_dir, plan, time.time())
    module.exit_json(**result)


if __name__ == "__main__":
    main()
