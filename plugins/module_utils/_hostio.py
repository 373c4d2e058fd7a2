# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The host as the planners and readers see it: one object for every question they ask it.

Private to agentguard.hardening. Stdlib only (the guard runs it on hosts without Ansible, _desired.GUARD_FILES).
Every planner and reader (_rules.plan_rules, _netdev.read_host, _firewalls.read_firewalls, _log_sources,
_metrics) takes a HostIO and asks it, never the host itself, so that unit tests drive them with a fake host
(HostIO(run, which, warn, exists=..., ...) or a subclass) without root, runtimes or a journal.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import glob
import grp
import os
import pwd


def open_text(path):
    """A regular file opened for reading text; OSError otherwise (a FIFO or a device could block)."""
    if os.path.exists(path) and not os.path.isfile(path):
        raise IOError("not a regular file")
    return open(path, errors="replace")


class HostIO(object):
    """The host. run, which and warn are given (an AnsibleModule's: module_host; the guard's own); every
    other reader is the real host's unless a keyword replaces it (a fake host for tests):

    run(argv, data=None) -> (rc, out, err), run with LC_ALL=C; which(name, required=False) -> the binary's
    path, None when it is not installed (required: fails instead); warn(text) says what the answer leaves
    open; open_text(path) -> a text file (OSError when it cannot be read); read_text(path) -> its text or None;
    exists(path); stat(path) -> (uid, gid, mode) or None; realpath(path); is_physical(name); glob(pattern);
    now() -> an aware datetime; getpwuid(uid) -> a passwd entry, uid_of(name) -> a uid (KeyError when there is
    none); groups(name) -> [(gid, group name)]; comms() -> the set of the processes' names; resolve: the
    destinations' addresses through the trusted resolvers (None: _resolve.resolve_destinations, which the
    planner imports, this file being stdlib only).
    """

    resolve = None

    def __init__(self, run, which, warn, **readers):
        self.run = run
        self.which = which
        self.warn = warn
        for name, reader in readers.items():
            if not hasattr(self, name):
                raise TypeError("HostIO has no reader %s" % name)
            setattr(self, name, reader)
        # What one reader read that a later one needs: the kernel log's lines (the TLS gate's join).
        self.cache = {}

    open_text = staticmethod(open_text)
    exists = staticmethod(os.path.exists)
    realpath = staticmethod(os.path.realpath)
    glob = staticmethod(glob.glob)
    getpwuid = staticmethod(pwd.getpwuid)

    @staticmethod
    def now():
        return datetime.datetime.now(datetime.timezone.utc)

    @staticmethod
    def read_text(path):
        """The text of a file, or None when it cannot be read."""
        try:
            with open(path) as handle:
                return handle.read()
        except (IOError, OSError, UnicodeError):
            return None

    @staticmethod
    def stat(path):
        """(uid, gid, mode) of a path, following links, or None when absent."""
        try:
            info = os.stat(path)
        except OSError:
            return None
        return info.st_uid, info.st_gid, info.st_mode

    @staticmethod
    def is_physical(name):
        """Whether a network device is backed by hardware (/sys/class/net/NAME/device exists)."""
        return os.path.exists("/sys/class/net/%s/device" % name)

    @staticmethod
    def uid_of(name):
        """The uid of a user name (KeyError when there is none)."""
        return pwd.getpwnam(name).pw_uid

    @staticmethod
    def groups(name):
        """[(gid, group name)] of a user name or numeric uid: primary and supplementary ([] without a passwd entry)."""
        try:
            entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
        except KeyError:
            return []
        found = []
        for gid in os.getgrouplist(entry.pw_name, entry.pw_gid):
            try:
                found.append((gid, grp.getgrgid(gid).gr_name))
            except KeyError:
                found.append((gid, str(gid)))
        return found

    @staticmethod
    def comms(proc="/proc"):
        """The comm of every process of this host (a set); processes that end while read are skipped."""
        comms = set()
        try:
            entries = os.listdir(proc)
        except OSError:
            return comms
        for entry in entries:
            if not entry.isdigit():
                continue
            try:
                with open(os.path.join(proc, entry, "comm")) as handle:
                    comms.add(handle.read().strip())
            except (IOError, OSError):
                continue
        return comms

    def user_name(self, uid):
        """The name of a uid on this host; None for no uid or a uid without a name."""
        if uid is None:
            return None
        try:
            return self.getpwuid(uid).pw_name
        except KeyError:
            return None

    def output(self, argv):
        """What argv prints on stdout whatever its exit code; '' when it is not installed or cannot be run."""
        try:
            return self.run(argv)[1]
        except (IOError, OSError):
            return ""


def module_host(module, **readers):
    """The host as an AnsibleModule reaches it: its run_command, get_bin_path and warn (readers: as HostIO's)."""
    def run(argv, data=None):
        # A bare name is looked up like get_bin_path does (the sbin directories too); OSError when it is not installed.
        executable = argv[0] if os.path.isabs(argv[0]) else module.get_bin_path(argv[0])
        if executable is None:
            raise OSError("%s not found" % argv[0])
        # Never let run_command fail the module itself: a command that dies before reading its
        # input (EPIPE) must still reach apply_plan's rollback.
        try:
            return module.run_command([executable] + list(argv[1:]), data=data, binary_data=True,
                                      environ_update={"LC_ALL": "C"}, handle_exceptions=False)
        except (OSError, IOError) as exc:
            return 1, "", "could not run or feed %s: %s" % (argv[0], exc)
    readers.setdefault("warn", module.warn)
    readers.setdefault("which", module.get_bin_path)
    return HostIO(run=run, **readers)
