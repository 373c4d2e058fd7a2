# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""What the role agentguard.hardening.egress computes: its checks, its questions to the host, its decisions.

Filters (each documented in the .yml file of its name beside this one, which ansible-doc reads; tested in
tests/unit/plugins/filter/test_egress_phases.py). Each takes the registered results it depends on as
explicit arguments and returns plain data: the role's tasks only run what these decide.

- egress_input_errors: every wrong input, on the controller, before the host is read.
- egress_host_query, egress_platform, egress_host_errors: what egress_host_state is asked, the host's
  row of the platform table, and why the host cannot be hardened.
- egress_phases: which phase of tasks/main.yml runs (install_packages, run_resolver, plan_rules, apply_rules, ...;
  the role's __egress_decision), the packages to install and the resolvers the module uses; egress_decide: the same from the
  registered results and the platform table, with the platform row and the files it computed on the way.
- egress_dns_names, egress_dns_conflicts, egress_resolved_in_charge: the filtering resolver's setup.
- egress_failure_message: what a failed apply, TLS gate setup or canary says, with what became of the rules.
(egress_boot_files, egress_tls_gate_files, egress_guard_files and egress_resolver_files, what the role writes byte
for byte, are in egress_boot_files.py.)
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import difflib
import re

from ansible.errors import AnsibleFilterError
from ansible.module_utils.parsing.convert_bool import boolean
from ansible_collections.agentguard.hardening.plugins.filter.egress_boot_files import (
    GATE_MODES_ON,
    LOOPBACK_RESOLVERS,
    _boot_files_current,
    _tls_files_current,
    egress_boot_files,
    egress_guard_files,
    egress_tls_gate_files,
    guard_files_current,
    guard_paths,
    guard_settings,
)
from ansible_collections.agentguard.hardening.plugins.filter.egress_canary_checks import canary_scope_error, canary_target
from ansible_collections.agentguard.hardening.plugins.filter.egress_policy_errors import egress_policy_errors

# The collection's module_utils are imported where a filter needs them, not here: to find any one filter,
# Ansible loads every filter file of the collection in each worker, and its collection loader compiles a
# module_utils from source on every import (no bytecode cache). tests/unit/plugins/filter/test_filter_imports.py.

# A user the role creates (the TLS gate's): a plain system user name.
USER_NAME_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
# Debian's own web server unit, which installing nginx would enable and start on port 80.
NGINX_UNIT = "nginx.service"
# egress_* names that are not inputs of the role and still belong to the collection: what the role sets
# (egress_result, egress_warnings) and the variables of the collection's playbooks (harden_agent.yml's
# egress_target and egress_serial, egress_report.yml's egress_report*, export_kubernetes.yml's egress_export*).
# The variables of the collection's playbooks: egress_learn.yml's inputs (an operator sets egress_learn_names in
# group_vars) and what it registers on the agents (egress_learned_host), which a later play of the same run sees.
LEARN_PLAYBOOK_VARS = ("egress_learn_target", "egress_learn_dir", "egress_learn_names", "egress_learn_accept",
                       "egress_learn_accept_withheld", "egress_learned_host", "egress_learn_play_hosts",
                       "egress_learn_hosts", "egress_learn_input", "egress_learn_result")
OTHER_VARS = ("egress_result", "egress_warnings", "egress_target", "egress_serial") + LEARN_PLAYBOOK_VARS
OTHER_PREFIXES = ("egress_report", "egress_export")
UNIT_RE = re.compile(r"^[A-Za-z0-9@_.:-]+[.](service|socket|target|timer|path)$")
RESOLVED_UNIT = "systemd-resolved.service"
# Sockets on port 53 that collide with the filtering resolver's (systemd-resolved's 127.0.0.53/54 do not).
DNS_CONFLICT_RE = re.compile(r"\s(0\.0\.0\.0|\*|\[::\]|127\.0\.0\.1|\[::1\]):53\s")


def _int(value, fallback=0):
    try:
        return int(value)
    except (TypeError, ValueError):
        return fallback


def _bool(value):
    return boolean(value, strict=False)


def _dict(value):
    return value if isinstance(value, dict) else {}


def guard_skipped_reason(asked, host):
    """Why the guard, asked for (egress_guard, egress_state present), is not installed on host (egress_host_state's
    answer): systemd is not PID 1 there. '' when it can run, or when nothing is known of the host yet."""
    if not (asked and host) or _dict(host).get("systemd"):
        return ""
    return ("egress_guard: systemd is not PID 1 on this host, so the guard (agentguard-guard.service) is not "
            "installed: nothing restores the rules if they are changed between runs")


def _unique(items):
    seen = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return seen


def unknown_variable_errors(variables, known):
    """One error per egress_* variable that is neither an input of the role (known) nor one of OTHER_VARS and
    OTHER_PREFIXES: a misspelled variable would be ignored and the role run without it (egress_alow: an empty
    allowlist). With the closest known name when there is one."""
    known = sorted(set(known or ()) | set(OTHER_VARS))
    errors = []
    for name in sorted(set(variables or ())):
        if name in known or name.startswith(OTHER_PREFIXES):
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
        errors.append("%s is not a variable of the role egress%s; a misspelled variable would be ignored, so the "
                      "role refuses it (its variables are in roles/egress/README.md)."
                      % (name, " (did you mean %s?)" % close[0] if close else ""))
    return errors


def egress_input_errors(options, dns_before_units=None, rollback_timeout=0, canary_forbidden=None, rollback_min=20,
                        tls_before_units=None, canary=True, variables=None, known=None):
    """Every problem with the role's inputs, each naming the variable and its value; [] when none.

    options are the module's (the role's __egress_rules_args): the module's own validation runs on them
    (egress_policy_errors), with the role's variable names. Then what only the role needs.
    """
    from ansible_collections.agentguard.hardening.plugins.module_utils._options import ROLE_VARIABLES, filtering_upstream_error
    from ansible_collections.agentguard.hardening.plugins.module_utils._policy import as_list

    if not isinstance(options, dict):
        raise AnsibleFilterError("egress_input_errors expects the dictionary of egress_rules options, got %s"
                                 % type(options).__name__)
    errors = unknown_variable_errors(variables, known) if known else []
    errors.extend(egress_policy_errors(options, ROLE_VARIABLES))
    errors.extend(e for e in [filtering_upstream_error(options)] if e)
    for name, units in (("egress_dns_before_units", dns_before_units), ("egress_tls_gate_before_units", tls_before_units)):
        invalid = [str(unit) for unit in as_list(units, name, errors) if not UNIT_RE.match(str(unit))]
        if invalid:
            errors.append("%s must hold systemd unit names such as agent.service; invalid: %s." % (name, ", ".join(invalid)))
    gate_user = options.get("tls_gate_user")
    if (options.get("state") == "present" and options.get("tls_gate") in GATE_MODES_ON
            and not USER_NAME_RE.match(str(gate_user or ""))):
        errors.append("egress_tls_gate_user is %r: the role creates this system user, so give a name of lowercase letters, "
                      "digits, '_' and '-' (at most 32, not starting with a digit or '-')." % (gate_user,))
    if _int(rollback_timeout) != 0 and _int(rollback_timeout) < int(rollback_min):
        errors.append("egress_rollback_timeout is %s: use 0 (no rollback) or at least %s seconds, time for the "
                      "module to run and a fresh connection to be made." % (rollback_timeout, rollback_min))
    if isinstance(canary_forbidden, str):
        canary_forbidden = as_list(canary_forbidden, "egress_canary_forbidden", errors)
    if not isinstance(canary_forbidden, (list, type(None))):
        errors.append("egress_canary_forbidden: %r is not a list" % (canary_forbidden,))
    else:
        for index, entry in enumerate(canary_forbidden or []):
            try:
                canary_target(entry, "egress_canary_forbidden[%d]" % index)
            except ValueError as exc:
                errors.append(str(exc))
        # What the canary can prove from the host: not the forwarded path that egress_scope none is about.
        conflict = canary_scope_error(options.get("scope"), canary_forbidden, options.get("state"), options.get("mode"),
                                      _bool(canary))
        if conflict:
            errors.append(conflict)
    return errors


def _row(platforms, key):
    """The platform table's row for key, with what a row that `extends` another takes from it."""
    row = dict(_dict(platforms.get(key)))
    base = row.pop("extends", None)
    if base is None:
        return row
    if base not in platforms or base == key:
        raise AnsibleFilterError("the platform table's row %s extends %r, which is not a row of it" % (key, base))
    return dict(_row(platforms, base), **row)


def _entry_users(allow):
    """[(index, name)] of the user names (not uids) that egress_allow entries restrict themselves to."""
    found = []
    for index, entry in enumerate(allow or []):
        users = entry.get("users") if isinstance(entry, dict) else None
        for user in (users if isinstance(users, list) else [users] if users else []):
            text = str(user).strip()
            if text and not text.isdigit():
                found.append((index, text))
    return found


def egress_host_query(platforms, dropin_name, dns_files, units, users, allow=None, tls=None, guard=None):
    """The options of egress_host_state: every platform's packages, boot units and files at once (the module
    names the host's platform only in its answer), the units whose state the role needs, and the users: the
    restricted ones (scope users; also asked which runtime sockets they reach) and those of egress_allow
    entries (users:), which must exist too. tls (the role's __egress_tls): the TLS gate's files, its unit and
    Debian's nginx.service (whether nginx is installed, and masked), its user (whether it exists) and the drop-ins
    of its before_units.
    guard (the role's __egress_run.guard): the guard's unit and files (egress_guard_files' paths)."""
    platforms = _dict(platforms)
    rows = [_row(platforms, key) for key in platforms]
    packages = set()
    paths = list(dns_files or [])
    for row in rows:
        for key in ("packages", "persist_packages", "dns_packages", "tls_gate_packages"):
            packages.update(row.get(key) or [])
        paths.extend((row.get("persist_files") or {}).values())
        paths.extend("/etc/systemd/system/%s.d/%s" % (unit, dropin_name) for unit in row.get("dropin_units") or [])
    tls = _dict(tls)
    gate_units = [tls["unit"], NGINX_UNIT] if tls.get("unit") else []
    paths.extend(_tls_paths(tls))
    # The gate's drop-ins too: the fast path compares every file the gate's phase writes (egress_tls_gate_files).
    if tls.get("unit"):
        paths.extend("/etc/systemd/system/%s.d/%s" % (unit, tls["dropin"]) for unit in tls.get("before_units") or [])
    guard_units = []
    if guard is not None:
        from ansible_collections.agentguard.hardening.plugins.module_utils._desired import GUARD_FILES

        guard = guard_settings(guard)
        guard_units = [guard["unit"]]
        paths.extend(guard_paths(guard))
        paths.extend(guard["lib"] + "/ansible_collections/agentguard/hardening/plugins/module_utils/" + name
                     for name in GUARD_FILES)
    return dict(
        packages=sorted(packages),
        active=list(units or []) + gate_units + guard_units,
        enabled=sorted(set(unit for row in rows for unit in row.get("boot_units") or []) | set(gate_units) | set(guard_units)),
        paths=_unique(paths),
        users=_unique(list(users or []) + [name for index, name in _entry_users(allow)]
                      + ([tls["user"]] if tls.get("user") else [])),
        runtime_users=list(users or []),
    )


def _tls_paths(tls):
    """The TLS gate's unit and configuration: what it leaves on a host (its directories go with them)."""
    if not tls.get("unit"):
        return []
    return ["/etc/systemd/system/%s" % tls["unit"], tls["conf"], tls["conf"].rsplit("/", 1)[0]]


def egress_platform(host, platforms):
    """The host's row of the platform table: os_family-major first (a release that differs, whose row may
    `extends` another and give only what differs), then os_family; {} for a platform the role does not support."""
    facts = _dict(_dict(host).get("platform"))
    family = facts.get("os_family") or ""
    for key in ("%s-%s" % (family, facts.get("distribution_major_version") or ""), family):
        if key in _dict(platforms):
            return _row(platforms, key)
    return {}


def egress_host_errors(host, platform, hostname="this host", allow=None, scope_users=None, tls=None):
    """Why this host cannot be hardened, before anything is installed: its platform, users that do not exist
    (those of egress_scope_users, and those of egress_allow entries, named by entry; not the TLS gate's user,
    which the role creates), and a TLS gate (tls: the run's gate settings, with mode) on a host without systemd."""
    host, tls = _dict(host), _dict(tls)
    facts = _dict(host.get("platform"))
    errors = []
    if facts.get("system") != "Linux" or not platform:
        errors.append("The role egress supports Debian, Ubuntu and Enterprise Linux only; this host is %s %s (%s, %s)."
                      % (facts.get("distribution"), facts.get("distribution_major_version"),
                         facts.get("os_family"), facts.get("system")))
    missing = [name for name in host.get("missing_users") or [] if name != tls.get("user")]
    if tls.get("mode") in GATE_MODES_ON and not host.get("systemd"):
        errors.append("egress_tls_gate is %s, but systemd is not PID 1 on %s: the gate runs as a systemd unit. Set "
                      "egress_tls_gate: off on this host." % (tls.get("mode"), hostname))
    entries = [(index, name) for index, name in _entry_users(allow) if name in missing]
    in_entries = set(name for index, name in entries)
    scope_missing = [name for name in missing if scope_users is None or name in scope_users or name not in in_entries]
    if scope_missing:
        errors.append("egress_scope_users: %s do(es) not exist on %s (create them first, or give numeric uids)."
                      % (", ".join(scope_missing), hostname))
    for index, name in entries:
        errors.append("egress_allow[%d].users: user %r does not exist on %s (install its service first, or give "
                      "its uid)." % (index, name, hostname))
    return errors


def egress_phases(run, host, platform, boot_files=None, plan=None, dns_user_lookup=None, tls_files=None, tls_user=None,
                  guard_files=None):
    """Which phase of the role runs, each decided once, from what the run was asked (run: state, mode,
    dns_mode, persist, canary, canary_every_run, check_mode, dns: {user, unit, files}), the host's state
    (egress_host_state), its platform row, the files to persist (egress_boot_files), the plan (the registered
    check-mode result of egress_rules) and the lookup of the filtering resolver's user (registered getent).

    Each flag is named for what its task does, so the role's `when: __egress_decision.<flag>` reads as a
    sentence: prepare_host, install_packages, run_resolver, plan_rules, apply_rules, run_canary, persist_rules,
    remove_role_files (egress_state absent), remove_persisted_rules, remove_resolver and nothing_to_do (after
    the plan: the role ends), plus missing_packages, debconf, resolvers (what the module resolves through),
    dns_active, dns_leftovers and plan_blocked (why check mode cannot plan; '' when it can).

    The TLS gate (run.tls: the role's __egress_tls with mode and user; tls_files: egress_tls_gate_files of the
    plan; tls_user: the registered creation of its user): tls_gate_on, create_tls_gate_user (before the plan),
    mask_nginx (mask Debian's nginx.service before nginx is installed: it is not installed yet, so nothing of
    the host's own is masked), set_up_tls_gate (write and (re)start the gate: after an apply, from its result, or
    when its files or unit differ) and remove_tls_gate (the gate is off and
    left its unit or configuration).

    The guard (run.guard: wanted (egress_guard), metrics, metrics_dir, before_units; guard_files: egress_guard_files):
    install_guard (write and (re)start it: wanted, and its files or unit differ; or say guard_skipped), remove_guard
    (not wanted, and it left its unit or files: egress_guard false, egress_state absent) and guard_skipped (why it
    is not installed although egress_guard is true: systemd is not PID 1; '' otherwise).

    prepare_host: whether the phases before the plan run (tasks/prepare_host.yml): the host cannot be hardened
    (host_errors: egress_host_errors of the host, for run's hostname, allow and scope_users; refused there before
    anything changes), or a package or the gate's user is needed. One flag, so an unchanged host skips one
    include, not three tasks. Before the host is read (host {}), no host_errors.
    """
    run, host, platform, plan = _dict(run), _dict(host), _dict(platform), _dict(plan)
    present = run.get("state") == "present"
    check_mode = _bool(run.get("check_mode", False))
    persist = _bool(run.get("persist", True))
    filtering = present and run.get("dns_mode") == "filtering"
    dns = _dict(run.get("dns"))
    installed = set(host.get("packages") or [])

    # Packages the policy needs: the persistence's only with egress_persist, the resolver's only when filtering.
    wanted = list(platform.get("packages") or [])
    wanted += list(platform.get("persist_packages") or []) if persist else []
    wanted += list(platform.get("dns_packages") or []) if filtering else []
    tls = _dict(run.get("tls"))
    tls_on = present and tls.get("mode") in GATE_MODES_ON
    wanted += list(platform.get("tls_gate_packages") or []) if tls_on else []
    missing = [name for name in _unique(wanted) if name not in installed]
    gate_user_missing = tls_on and tls.get("user") in (host.get("missing_users") or [])
    gate_user_created = bool(_dict(tls_user).get("changed")) and not check_mode

    dns_active = _dict(host.get("active")).get(dns.get("unit")) == "active"
    paths = _dict(host.get("paths"))
    leftovers = [path for path in dns.get("files") or [] if path in paths]
    passwd = _dict(_dict(_dict(dns_user_lookup).get("ansible_facts")).get("getent_passwd"))
    dns_user_missing = filtering and passwd.get(dns.get("user")) is None

    # The module resolves through the filtering resolver whenever it runs (only its user may reach the
    # upstream servers then, also on the run that leaves filtering mode): it runs when it ran as the run
    # started, or once the resolver phase started it (not in check mode).
    resolvers = (LOOPBACK_RESOLVERS if present and host.get("systemd") and (dns_active or (filtering and not check_mode))
                 else [])

    # The module cannot plan in check mode on a host that lacks the packages (they would be installed first in
    # a real run); with egress_state=absent, a host without iptables has nothing to remove.
    first = missing + (["the user %s" % dns.get("user")] if check_mode and dns_user_missing else [])
    first += ["the user %s" % tls.get("user")] if check_mode and gate_user_missing and not gate_user_created else []
    if present:
        can_plan = not (check_mode and first)
    else:
        can_plan = platform.get("iptables_package") in installed
    plan_blocked = ("" if can_plan or not present else
                    "Check mode: %s would be installed or created first, so the rules cannot be planned on this host yet."
                    % ", ".join(first))

    apply = bool(plan.get("changed")) and not plan.get("skipped") and not check_mode
    canary_possible = (_bool(run.get("canary", True)) and run.get("mode") == "enforce" and present and not check_mode)
    tls_files = tls_files or []
    tls_gate = (tls_on and bool(tls_files) and not plan.get("skipped")
                and (apply or not _tls_files_current(tls_files, host, tls.get("unit"))))
    canary = canary_possible and (apply or tls_gate or _bool(run.get("canary_every_run", False)))
    boot_files = boot_files or []
    persist_now = present and persist and bool(boot_files) and not _boot_files_current(boot_files, host, platform)
    remove_resolver = not filtering and bool(leftovers)
    tls_leftovers = [path for path in _tls_paths(tls) if path in paths]
    remove_tls_gate = not tls_on and bool(tls_leftovers)
    install = present and bool(missing)
    guard_cfg = guard_settings(run.get("guard"))
    guard_asked = present and _bool(guard_cfg.get("wanted", False))
    guard_wanted = guard_asked and bool(host.get("systemd"))
    guard_leftovers = [path for path in guard_paths(guard_cfg) if path in paths]
    remove_guard = not guard_wanted and bool(guard_leftovers)
    guard_skipped = guard_skipped_reason(guard_asked, host)
    # Where it cannot run, the phase only says so (every run: never silent).
    guard = bool(guard_skipped) or (guard_wanted and bool(guard_files) and not plan.get("skipped") and not plan_blocked
                                    and not guard_files_current(guard_files, host, guard_cfg.get("unit")))
    host_errors = egress_host_errors(host, platform, run.get("hostname") or "this host",
                                     run.get("allow") if present else [], run.get("scope_users"),
                                     tls if present else dict(tls, mode="off")) if host else []
    # Grouped by phase, each flag with what its tasks read.
    return dict(
        # Before the plan (tasks/prepare_host.yml): refuse the host, or install what the policy needs.
        prepare_host=bool(host_errors) or install or gate_user_missing,
        host_errors=host_errors,
        install_packages=install,
        missing_packages=missing,
        debconf=list(platform.get("debconf") or []) if persist else [],
        # The filtering resolver, or what a former one left.
        run_resolver=filtering,
        resolvers=list(resolvers),
        dns_active=dns_active,
        remove_resolver=remove_resolver,
        dns_leftovers=leftovers,
        # The rules: plan, apply, prove, persist.
        plan_rules=can_plan,
        plan_blocked=plan_blocked,
        apply_rules=apply,
        run_canary=canary,
        persist_rules=persist_now,
        # The TLS gate.
        tls_gate_on=tls_on,
        create_tls_gate_user=gate_user_missing,
        mask_nginx=tls_on and bool(host.get("systemd")) and _dict(host.get("enabled")).get(NGINX_UNIT) == "not-found",
        set_up_tls_gate=tls_gate,
        remove_tls_gate=remove_tls_gate,
        tls_leftovers=tls_leftovers,
        # The guard.
        install_guard=guard,
        guard_skipped=guard_skipped,
        guard_unit=guard_cfg["unit"],
        remove_guard=remove_guard,
        guard_leftovers=guard_leftovers,
        guard_remove=guard_leftovers + [guard_cfg["guard_dir"], guard_cfg["state_dir"] + "/desired.json"],
        # egress_state=absent: what the role itself wrote.
        remove_role_files=not present,
        remove_persisted_rules=not present and persist,
        # Never before a plan is known (the fast path's, from egress_host_state, or egress_rules'), nor on a host
        # that is to be refused.
        nothing_to_do=bool(plan) and not host_errors and not (apply or canary or persist_now or not present
                                                              or remove_resolver or plan_blocked or tls_gate
                                                              or remove_tls_gate or guard or remove_guard),
    )


def egress_decide(run, host_state, platforms, result=None, plan=None, dns_user_lookup=None, tls_user=None):
    """egress_phases from the registered results and the platform table as they are, the role's one call.

    The host's platform row, the files to persist and the TLS gate's files are computed here, once per call,
    and returned with the decisions (platform, boot_files, tls_files): the role evaluates its decisions
    several times a run, and each lazily templated variable in between costs per host (docs/benchmarks.md,
    fleet rollout). run is egress_phases' with marker, dropin (the boot units' drop-in name), dns.servers
    and tls.before_units added.
    """
    run = _dict(run)
    host = _dict(host_state)
    platform = egress_platform(host, platforms) if host else {}
    result = _dict(result)
    dns, tls = _dict(run.get("dns")), _dict(run.get("tls"))
    boot_files = egress_boot_files(result, platform, run.get("marker"), run.get("dropin"))
    tls_files = egress_tls_gate_files(result, tls.get("mode"), tls.get("user"), run.get("dns_mode"), dns.get("servers"),
                                      tls, run.get("marker"), tls.get("before_units"), platform)
    guard = _dict(run.get("guard"))
    guard_files = (egress_guard_files(guard, run.get("marker"), platform, guard.get("metrics"), guard.get("metrics_dir"),
                                      guard.get("before_units"))
                   if _bool(guard.get("wanted", False)) and run.get("state") == "present" and host.get("systemd") else [])
    decided = egress_phases(run, host, platform, boot_files, plan, dns_user_lookup, tls_files, tls_user, guard_files)
    decided.update(platform=platform, boot_files=boot_files, tls_files=tls_files, guard_files=guard_files)
    return decided


def egress_dns_names(allow, families=None):
    """The DNS names of egress_allow (not addresses or networks) for the filtering resolver: each with its
    label, the name, whether its subdomains resolve too, and the sets (one per opened family) its answers fill."""
    from ansible_collections.agentguard.hardening.plugins.module_utils._policy import FAMILIES, parse_host
    from ansible_collections.agentguard.hardening.plugins.module_utils._render import set_name

    families = FAMILIES if families is None else families
    names = []
    for dest in allow or []:
        try:
            kind, host = parse_host(dest.get("host"), "host")
        except ValueError:
            continue  # the role's input check has refused it already
        if kind != "name":
            continue
        names.append(dict(label=dest.get("name"), host=host, subdomains=_bool(dest.get("subdomains", False)),
                          sets=[set_name(family, dest.get("name")) for family in FAMILIES if family in (families or [])]))
    return names


def egress_dns_conflicts(lines):
    """The listeners (lines of `ss -H -l -n -t -u sport = :53`) that would collide with the filtering
    resolver: on all addresses or on loopback. systemd-resolved's 127.0.0.53 and .54 do not."""
    return [re.sub(r"\s+", " ", line) for line in lines or [] if DNS_CONFLICT_RE.search(line)]


def egress_resolved_in_charge(host, resolv_conf_stat):
    """True when systemd-resolved owns name resolution: it runs (egress_host_state's answer) and
    /etc/resolv.conf is one of its files (the registered stat of it, not followed)."""
    running = _dict(_dict(host).get("active")).get(RESOLVED_UNIT) == "active"
    target = _dict(_dict(resolv_conf_stat).get("stat")).get("lnk_source") or ""
    return running and str(target).startswith("/run/systemd/resolve/")


def egress_failure_message(failed_result, restore, step="apply", failed_task="?"):
    """What the host fails with when the apply (step apply), the TLS gate's setup (tls_gate) or the canary (step
    canary) failed: the reason,
    then what the immediate restore (its registered result; skipped when this run took no snapshot) did."""
    failed, restore = _dict(failed_result), _dict(restore)
    if restore.get("skipped") or not restore:
        outcome = "skipped"
    elif restore.get("rc", 1) == 0:
        outcome = "restored"
    else:
        outcome = "failed"
    error = (restore.get("stderr") or restore.get("msg") or "").strip()
    if step in ("canary", "tls_gate"):
        clause = {
            "skipped": "This run did not change the rules, so nothing was rolled back.",
            "restored": "The rules were rolled back to the snapshot taken before this run's apply and were not persisted.",
            "failed": "Restoring the snapshot taken before this run's apply FAILED (%s): inspect the host; nothing "
                      "was persisted." % error,
        }[outcome]
        if step == "tls_gate":
            reason = (failed.get("stderr") or "").strip() or failed.get("msg") or failed_result
            return 'The TLS gate could not be set up at "%s": %s. %s' % (failed_task, reason, clause)
        return "%s %s" % (failed.get("msg") or failed_result, clause)
    reason = (failed.get("stderr") or "").strip() or failed.get("msg") or failed_result
    clause = {
        "skipped": "No snapshot was taken and nothing was applied.",
        "restored": "The snapshot taken before the apply was restored.",
        "failed": "Restoring the snapshot FAILED (%s): inspect the host." % error,
    }[outcome]
    return 'The egress apply failed at "%s": %s. %s' % (failed_task, reason, clause)


class FilterModule(object):
    def filters(self):
        return {
            "egress_input_errors": egress_input_errors,
            "egress_host_query": egress_host_query,
            "egress_platform": egress_platform,
            "egress_host_errors": egress_host_errors,
            "egress_phases": egress_phases,
            "egress_decide": egress_decide,
            "egress_dns_names": egress_dns_names,
            "egress_dns_conflicts": egress_dns_conflicts,
            "egress_resolved_in_charge": egress_resolved_in_charge,
            "egress_failure_message": egress_failure_message,
        }
