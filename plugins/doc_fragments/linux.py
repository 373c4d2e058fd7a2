# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # The platform of every module of this collection: they read and change Linux's netfilter, journal
    # and /proc. A module narrows the description with its own attributes.platform.description.
    DOCUMENTATION = r"""
attributes:
  platform:
    support: full
    platforms: posix
    description: Linux hosts.
"""
