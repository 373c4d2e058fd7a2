# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The commands the module runs against netfilter, through one runner.

Private to agentguard.hardening. run(argv, data) -> (rc, stdout, stderr): argv lists only, the
xtables lock honoured, so the plan and apply logic above it is unit-tested with a recording runner.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

SAVE = {"ipv4": "iptables-save", "ipv6": "ip6tables-save"}
RESTORE = {"ipv4": "iptables-restore", "ipv6": "ip6tables-restore"}
XTABLES_WAIT = "10"


class CommandError(Exception):
    def __init__(self, argv, rc, out, err):
        self.argv, self.rc, self.out, self.err = argv, rc, out, err
        detail = (err or out or "").strip()
        super(CommandError, self).__init__("%s exited %d: %s" % (" ".join(argv), rc, detail))


class Netfilter(object):
    """The commands we run, with argv lists only and the xtables lock honoured."""

    def __init__(self, run, bin_path):
        self._run = run
        self._bin = bin_path

    def _call(self, argv, data=None):
        rc, out, err = self._run(argv, data)
        if rc != 0:
            raise CommandError(argv, rc, out, err)
        return out

    def save(self, family):
        # Every table at once: filter, and mangle/nat where the forward path hooks in (HOOKS).
        return self._call([self._bin(SAVE[family], True)])

    def restore(self, family, payload, test=False):
        argv = [self._bin(RESTORE[family], True), "--noflush", "--wait", XTABLES_WAIT]
        if test:
            argv.append("--test")
        self._call(argv, payload)

    def has_ipset(self):
        return self._bin("ipset", False) is not None

    def ipset_save(self):
        if not self.has_ipset():
            return ""
        return self._call([self._bin("ipset", True), "save"])

    def ipset_restore(self, payload):
        self._call([self._bin("ipset", True), "restore"], payload)
