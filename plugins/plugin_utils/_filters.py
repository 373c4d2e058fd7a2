# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""What the collection's filter plugins share. Private to agentguard.hardening; controller side only."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleFilterError


def parse_each(filter_name, variable, value, parse):
    """[parse(item, "variable[index]") for each item of the list value]: the role variable a filter reads,
    checked entry by entry with the module_utils parser that names where and what (ValueError).
    AnsibleFilterError with that message, or saying that value is not a list."""
    if not isinstance(value, list):
        raise AnsibleFilterError("%s expects the list %s, got %s" % (filter_name, variable, type(value).__name__))
    parsed = []
    for index, item in enumerate(value):
        try:
            parsed.append(parse(item, "%s[%d]" % (variable, index)))
        except ValueError as exc:
            raise AnsibleFilterError(str(exc))
    return parsed
