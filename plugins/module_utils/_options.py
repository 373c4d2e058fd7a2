# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""egress_rules' options where they arrive unvalidated, and what every reader of them shares.

Private to agentguard.hardening: no compatibility promise outside the collection.

_policy.ARGUMENT_SPEC states each option's name, type, elements, default, choices and whether it is
required; the modules validate against it (AnsibleModule). check_options runs core's ArgumentSpecValidator
against it wherever options arrive otherwise (the role's controller-side check, the Kubernetes export, the
learn proposal), with messages that name where and the value; validated_policy adds build_policy's checks
of their meaning. What the rest of the collection shares about the options: ROLE_VARIABLES and
rename_option (the role's variable names in messages), placeholder_uid (a user the controller cannot look
up) and filtering_upstream_error (the role's rule beyond the module's).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import copy
import re
import zlib
from collections.abc import Mapping

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.module_utils.errors import ArgumentValueError
from ansible_collections.agentguard.hardening.plugins.module_utils._policy import (
    ARGUMENT_SPEC,
    PolicyError,
    as_list,
    build_policy,
    failed_under,
)

# The role's variable behind each option (roles/egress/vars/main.yml, __egress_rules_args; a unit test keeps
# them equal). Options the role feeds from internal variables keep their own name.
ROLE_VARIABLES = {
    "allow": "egress_allow", "dns_servers": "egress_dns_servers", "log_prefix": "egress_log_prefix",
    "log_limit": "egress_log_limit", "log_burst": "egress_log_burst", "deny_action": "egress_deny_action",
    "mode": "egress_mode", "scope": "egress_scope", "users": "egress_scope_users",
    "scope_networks": "egress_scope_networks", "families": "egress_families", "state": "egress_state",
    "dns_mode": "egress_dns_mode", "dns_set_timeout": "egress_dns_set_timeout", "dhcp": "egress_dhcp",
    "tls_gate": "egress_tls_gate", "tls_gate_user": "egress_tls_gate_user", "tls_gate_port": "egress_tls_gate_port",
    "learn": "egress_learn", "learn_users": "egress_learn_users", "learn_maxelem": "egress_learn_maxelem",
    "learn_timeout": "egress_learn_timeout",
}

# "allow[0].host: ...", "dns_servers: ...": the option a message is about comes first.
LEADING_OPTION = re.compile(r"^([a-z_]+)(?=[\[.:])")
TYPE_WORDS = {"str": "a string", "int": "a whole number", "float": "a number", "bool": "a boolean",
              "list": "a list", "dict": "a mapping", "path": "a path"}
FILTERING_UPSTREAM = ("egress_dns_servers is empty: egress_dns_mode=filtering needs the upstream resolvers the "
                      "local filtering resolver forwards the allowed names to.")


def rename_option(message, names=None):
    """message with its leading option (allow in "allow[0].host: ...") named as names says (default: the
    role's variables); any other option keeps its name."""
    names = ROLE_VARIABLES if names is None else names
    return LEADING_OPTION.sub(lambda m: names.get(m.group(1), m.group(1)), message, count=1)


def placeholder_uid(name):
    """A stable uid for a user name where users cannot be looked up (the controller, a cluster): build_policy
    then checks the name's form only; the module checks on the host that the user exists."""
    return 2 ** 31 + zlib.crc32(name.encode("utf-8")) % 2 ** 30


def filtering_upstream_error(options):
    """The role's rule beyond the module's: its filtering resolver needs upstream resolvers (egress_dns_servers).
    The message, or None. In enforce mode the module's own check says so, once. An option that is absent or
    None has its default."""
    def value(name):
        return ARGUMENT_SPEC[name].get("default") if options.get(name) is None else options[name]
    if value("state") == "present" and value("dns_mode") == "filtering" and value("mode") != "enforce" \
            and not value("dns_servers"):
        return FILTERING_UPSTREAM
    return None


def _validate(option, value):
    """(value as the option converts it, the first error or None): core's validator on one value."""
    result = ArgumentSpecValidator({"value": option}).validate({"value": value})
    errors = result.errors.errors
    return result.validated_parameters.get("value"), errors[0] if errors else None


def _problem(error, option, value, where):
    if isinstance(error, ArgumentValueError):
        return "%s: %r is not one of %s" % (where, value, ", ".join(option["choices"]))
    return "%s: %r is not %s" % (where, value, TYPE_WORDS.get(option.get("type", "str"), option.get("type")))


def _check_list(option, value, where, errors, failed):
    """The items of a list option, each checked as its elements (entries of suboptions through check_options)."""
    items, error = _validate({"type": "list"}, value)
    if error is not None:
        errors.append(_problem(error, {"type": "list"}, value, where))
        failed.add(where)
        return None
    checked = []
    one = dict((key, option[key]) for key in ("choices",) if key in option)
    one["type"] = "dict" if option.get("options") else option.get("elements", "raw")
    for index, item in enumerate(items):
        spot = "%s[%d]" % (where, index)
        converted, error = _validate(one, item)
        if error is not None and option.get("options"):
            errors.append("%s: %r is not a mapping with %s" % (spot, item, ", ".join(option["options"])))
            failed.add(spot)
            converted = None
        elif error is not None:
            errors.append(_problem(error, one, item, spot))
            failed.add(spot)
        elif option.get("options"):
            converted, entry_errors, entry_failed = check_options(converted, option["options"], spot + ".")
            errors.extend(entry_errors)
            failed.update(entry_failed)
        checked.append(converted)
    return checked


def plain(value):
    """value as plain dicts, lists, str, int, float, bool and None. What a filter receives from Ansible's
    templating is lazy (each container holds the templar and the variables it came from): core's validator
    deep-copies its parameters, which for those copies the whole variable context, about a second per host."""
    if isinstance(value, Mapping):
        return dict((plain(key), plain(item)) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    for kind in (bool, str, int, float):
        if isinstance(value, kind):
            return kind(value)
    return value


def _given(params, spec, prefix):
    """params without the options set to None (theirs is the default), also in the entries of a list of
    suboptions; options not in spec are dropped at the top."""
    given = {}
    for key, value in params.items():
        if value is None or not (prefix or key in spec):
            continue
        options = spec.get(key, {}).get("options")
        if options and isinstance(value, list):
            value = [_given(item, options, "entry.") if isinstance(item, dict) else item for item in value]
        given[key] = value
    return given


def check_options(params, spec=None, prefix=""):
    """(validated, errors, failed): params checked against spec (default ARGUMENT_SPEC) by core's
    ArgumentSpecValidator, with its conversions and defaults (an option set to None takes its default).

    errors: one message per problem, "where: value problem" ("allow[0].protocol: 'icmp' is not one of tcp, udp");
    failed: the paths of the values refused, which take their default in validated (an entry of a list that is
    not a mapping is None). Options not in spec are left out at the top (the role passes only its own) and
    refused in a list's entries. At the top, a string where a list is expected is refused (as_list).
    """
    spec = ARGUMENT_SPEC if spec is None else spec
    given = _given(plain(params) if not prefix else params, spec, prefix)
    errors, failed = [], set()
    if not prefix:
        for name in [n for n in spec if spec[n].get("type") == "list" and isinstance(given.get(n), str)]:
            given[name] = as_list(given[name], name, errors)
    result = ArgumentSpecValidator(spec).validate(given)
    if not result.errors.errors:
        return result.validated_parameters, errors, failed
    unknown = sorted(set(given) - set(spec))  # only in an entry: unknown options are dropped at the top
    if unknown:
        errors.append("%s: unknown key(s) %s; allowed keys are %s" % (prefix[:-1], ", ".join(unknown), ", ".join(spec)))
        failed.add(prefix[:-1])
    # Where and what: each option alone, so that every message names its place and its value.
    validated = {}
    for name, option in spec.items():
        where = prefix + name
        value = given.get(name)
        if value is None:
            if option.get("required"):
                errors.append("%s: missing; it is required" % where)
                failed.add(where)
            validated[name] = copy.deepcopy(option.get("default"))
            continue
        if option.get("type") == "list":
            value = _check_list(option, value, where, errors, failed)
            if not option.get("options") and failed_under(failed, where):
                failed.add(where)  # a list of plain elements counts as one value
        else:
            value, error = _validate(dict((k, v) for k, v in option.items() if k != "required"), value)
            if error is not None:
                errors.append(_problem(error, option, given[name], where))
                failed.add(where)
        if where in failed:
            value = copy.deepcopy(option.get("default"))
        validated[name] = value
    return validated, errors, failed


def validated_policy(params, lookup_user):
    """build_policy on params as they arrive (the role's, the export's): checked against ARGUMENT_SPEC first
    (check_options), then their meaning; a Policy, or PolicyError with every problem of both."""
    validated, errors, failed = check_options(params)
    try:
        policy = build_policy(validated, lookup_user, failed)
    except PolicyError as exc:
        errors.extend(exc.errors)
    if errors:
        raise PolicyError(errors)
    return policy
