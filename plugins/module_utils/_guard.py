# -*- coding: utf-8 -*-
# Copyright: agentguard.hardening contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The on-host guard: hold the host to the rules the last successful apply installed.

Private to agentguard.hardening. Runs on the target host as agentguard-guard.service, without Ansible:
the role copies this file and the module_utils it imports (_desired.GUARD_FILES, all stdlib-only) under
/usr/lib/agentguard/guard and starts it through roles/egress/files/agentguard-guard.

What it holds (the desired-state file, _desired.DESIRED_FILE, written by egress_rules under the apply
lock after every successful apply; _desired.desired_document): per family our part of every table as the module
computes it (_plan.make_plan: the filter table's OUTPUT policy, our jumps with their positions - first
in filter OUTPUT, first in mangle FORWARD, the TLS gate's and the filtering resolver's nat redirects -
and our chains' rules), and our ipsets' definitions with their static members. Nothing else: other
tools' chains, rules and sets are never named, so never touched.

How it compares and restores: it reads the live state with the module's own readers (_plan.read_live:
iptables-save, ip6tables-save, ipset save) and asks _plan.family_transaction for the one
iptables-restore --noflush transaction per family that turns our part back into the desired one (None:
in sync); sets first (_render.render_sets_update), then the rules, all through _apply.apply_plan, which
tests every payload and puts back what it changed if a step fails. It is the module's apply, fed the
desired state from the file instead of from a new resolution.

Filtering DNS mode: a dynamic set (one with a timeout) that still exists keeps its members, which the
resolver (dnsmasq ipset=) added; only a destroyed set (or one whose type or timeout changed) is
re-created, re-seeded with the apply's resolution. Answers the resolver gives later fill it again.

When it looks:
  - nf_tables backend: the kernel announces every ruleset change on the nfnetlink multicast group
    NFNLGRP_NFTABLES. A raw AF_NETLINK / NETLINK_NETFILTER socket joined to that group (stdlib socket,
    EventSocket) wakes the guard; a burst of events (an iptables-restore of many rules, a firewall
    reload) is debounced (DEBOUNCE seconds of quiet, at most DEBOUNCE_MAX after the first event).
    `nft monitor` would need a child process per guard and parsing its text; pyroute2 would need a
    package on every host for one socket option. The raw socket needs neither.
  - iptables-legacy and ipset send no such events: a periodic check every INTERVAL seconds is the safety
    net (and catches what an event could miss). On the legacy backend, where that check is all there is,
    it runs every LEGACY_INTERVAL seconds: a change is restored within that plus the restore time.
It never fights an apply: egress_rules, the rollback script and the canary's restore hold the lock
LOCK_FILE (flock) while they change the rules, and egress_rules leaves the marker MARKER_FILE while an
apply is in progress (a marker older than MARKER_MAX_AGE is stale: its apply died, and the armed
rollback has run by then). The rollback script snapshots the desired-state file with the rules and
restores both, so the guard never re-applies a ruleset the rollback restored away from.

Each restoration is a tamper event: one structured journal entry (SYSLOG_IDENTIFIER agentguard-guard,
the native journal protocol on /run/systemd/journal/socket; stderr where there is no journal) and the
counters of the status file.

Status file (STATUS_FILE in the guard's state directory, JSON, rewritten atomically after each check
that changed something and every STATUS_PERIOD seconds); its keys:
  version                    1
  started                    epoch seconds the guard started
  pid                        its process id
  backend                    "nf_tables" or "legacy" (what iptables-save reports), null before the first read
  events                     "netlink" (nf_tables events) or "periodic"
  interval_seconds           the periodic check's period
  checks_total               checks run since start
  last_check_timestamp       epoch seconds of the last check
  tamper_events_total        restorations since the status file was created (kept across restarts)
  tamper_events              list of {"kind", "family", "table", "count"}: how many events had each
                             difference, by kind (output-policy: the filter OUTPUT policy; output-jump:
                             our jump in filter OUTPUT missing or not first; hook-jump: our jump in mangle
                             FORWARD, nat PREROUTING/OUTPUT or filter INPUT; chain: one of our chains'
                             rules; ipset: one of our sets missing or changed - _metrics.TAMPER_KINDS),
                             family (ipv4, ipv6) and table (filter, mangle, nat, ipset); bounded: at
                             most 5 x 2 x 4 entries
  restore_failures_total     restorations that failed (the journal says why)
  last_restore_timestamp     epoch seconds the last restoration finished, null if none
  last_restore_seconds       how long the last restoration took (detection to restored), null if none
  last_open_seconds          from the first event announcing the change to restored (null when the
                             periodic check found it: the change's time is then unknown)
  last_event                 {"time", "differed": ["ipv4/filter/jump", ...]} of the last restoration
  policy_hash                sha256 of the desired state (DESIRED_FILE's "hash"), null without one
  applied_timestamp          epoch seconds of the apply that wrote the desired state, null without one
  in_sync                    true/false after the last check, null without a desired state
  paused                     why the last check did nothing (apply in progress, lock held), or null
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import errno
import fcntl
import json
import os
import select
import socket
import struct
import sys
import time
from collections import namedtuple

from ansible_collections.agentguard.hardening.plugins.module_utils._apply import ApplyError, apply_plan
from ansible_collections.agentguard.hardening.plugins.module_utils._desired import (
    DESIRED_FILE,
    LOCK_FILE,
    MARKER_FILE,
    MARKER_MAX_AGE,
    STATE_DIR,
    VERSION,
    GuardError,
    load_desired,
    read_json,
    write_json,
)
from ansible_collections.agentguard.hardening.plugins.module_utils._hostio import HostIO
from ansible_collections.agentguard.hardening.plugins.module_utils._netfilter import CommandError, Netfilter
from ansible_collections.agentguard.hardening.plugins.module_utils._plan import (
    Plan,
    family_transaction,
    read_live,
    split_sets,
)
from ansible_collections.agentguard.hardening.plugins.module_utils._render import render_sets_update, sets_equal
from ansible_collections.agentguard.hardening.plugins.module_utils._state import (
    EMPTY_HOOK,
    HOOK_TABLES,
    TEMP_SET_PREFIXES,
    LiveHook,
    ParseError,
)

GUARD_DIR = "/var/lib/agentguard/guard"
STATUS_FILE = "status.json"
INTERVAL = 5.0
# The legacy backend announces nothing: the periodic check is all there is, so it runs this often there
# (the 2 s goal, at the cost of a check a second: docs/benchmarks.md, the guard).
LEGACY_INTERVAL = 1.0
DEBOUNCE = 0.05
DEBOUNCE_MAX = 0.3
STATUS_PERIOD = 15.0
PAUSED_RETRY = 0.5
# A tool that re-asserts its own rule before ours would make the guard restore forever. A restoration
# needed within FIGHT_WINDOW seconds of the previous one's end is a fight; past BACKOFF_AFTER fights in
# BACKOFF_WINDOW seconds, the guard waits BACKOFF_DELAY between checks (and says so in every event).
FIGHT_WINDOW = 1.0
BACKOFF_AFTER = 10
BACKOFF_WINDOW = 60.0
BACKOFF_DELAY = 10.0
# Linux netlink constants (linux/netlink.h, linux/netfilter/nfnetlink.h).
NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NFNLGRP_NFTABLES = 7
JOURNAL_SOCKET = "/run/systemd/journal/socket"

Difference = namedtuple("Difference", ["kind", "family", "table"])


# Compare and plan the restoration ---------------------------------------------------------------

def differences(desired, live, live_sets):
    """What of our part differs from the desired state: a sorted list of Difference (bounded kinds)."""
    found = set()
    for family in desired.families:
        have = live[family].managed
        want = desired.managed[family]
        if have.policy != want.policy:
            found.add(Difference("output-policy", family, "filter"))
        if have.jumps != want.jumps:
            found.add(Difference("output-jump", family, "filter"))
        if have.chains != want.chains:
            found.add(Difference("chain", family, "filter"))
        for hook, want_hook in desired.hooks[family].items():
            have_hook = (live[family].hooks.get(hook) or LiveHook(EMPTY_HOOK, 0)).managed
            if have_hook.jumps != want_hook.jumps:
                found.add(Difference("hook-jump", family, HOOK_TABLES[hook]))
            if have_hook.chains != want_hook.chains:
                found.add(Difference("chain", family, HOOK_TABLES[hook]))
    current_sets = dict((n, s) for n, s in live_sets.items() if not n.startswith(TEMP_SET_PREFIXES))
    for family, sets in split_sets(desired.sets).items():
        for name, want in sets.items():
            have = current_sets.get(name)
            if have is None or not sets_equal(have, want):
                found.add(Difference("ipset", family, "ipset"))
    return sorted(found)


def restore_plan(desired, live, live_sets):
    """The _plan.Plan that puts our part back (apply it with _apply.apply_plan), or None when in sync.

    Sets: missing ones are created and seeded, static ones whose members differ are swapped in; a
    dynamic set that exists keeps its live members (sets_equal ignores them). Sets that are ours but
    not desired are left: only an apply removes sets."""
    transactions = {}
    for family in desired.families:
        transactions[family] = family_transaction(live[family].managed, live[family].hooks,
                                                  desired.managed[family], desired.hooks[family],
                                                  live[family].foreign_output_rules)
    current_sets = dict((n, s) for n, s in live_sets.items() if not n.startswith(TEMP_SET_PREFIXES))
    sets_update, created, changed_sets = render_sets_update(current_sets, desired.sets)
    if not sets_update and all(t is None for t in transactions.values()):
        return None
    return Plan(desired.families, live, live_sets, desired.managed, desired.sets, transactions, sets_update,
                created, changed_sets, [], {}, True, {}, "", desired.hooks)


# Events and the journal ---------------------------------------------------------------------------

class EventSocket(object):
    """The kernel's nf_tables change notifications (NFNLGRP_NFTABLES), or nothing where it has none."""

    def __init__(self, enabled=True):
        self.sock = None
        if not enabled:
            return
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
            sock.bind((0, 0))
            sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
            sock.setblocking(False)
            self.sock = sock
        except (OSError, AttributeError):
            self.sock = None

    def fileno(self):
        return self.sock.fileno()

    def drain(self):
        """Read what is queued; the number of messages (an overrun, ENOBUFS, counts as one)."""
        count = 0
        while self.sock is not None and count < 10000:
            try:
                self.sock.recv(65536)
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    count += 1
                    continue
                break
            count += 1
        return count

    def wait(self, timeout):
        """The monotonic time of the first event when one arrived within timeout seconds (then
        debounced: returns after a quiet DEBOUNCE, at most DEBOUNCE_MAX after the first event), else
        None; without a socket, sleeps."""
        if self.sock is None:
            time.sleep(max(timeout, 0))
            return None
        ready = select.select([self.sock], [], [], max(timeout, 0))[0]
        if not ready:
            return None
        first = time.monotonic()
        self.drain()
        while time.monotonic() - first < DEBOUNCE_MAX:
            ready = select.select([self.sock], [], [], DEBOUNCE)[0]
            if not ready:
                break
            self.drain()
        return first


def journal_payload(fields):
    """The native journal protocol's datagram for {FIELD: value} (binary-safe for multi-line values)."""
    parts = []
    for key in sorted(fields):
        value = str(fields[key]).encode("utf-8")
        if b"\n" in value:
            parts.append(key.encode("ascii") + b"\n" + struct.pack("<Q", len(value)) + value + b"\n")
        else:
            parts.append(key.encode("ascii") + b"=" + value + b"\n")
    return b"".join(parts)


def send_journal(fields, path=JOURNAL_SOCKET, stream=None):
    """One structured entry in the journal; on stderr (one JSON line) where there is no journal."""
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.sendto(journal_payload(fields), path)
            return True
        finally:
            sock.close()
    except (OSError, IOError):
        stream = stream or sys.stderr
        stream.write(json.dumps(fields, sort_keys=True) + "\n")
        stream.flush()
        return False


def tamper_fields(found, seconds, open_seconds, policy_hash_, ok, error=None):
    differed = ["%s/%s/%s" % (d.family, d.table, d.kind) for d in found]
    message = ("egress rules restored (%s) in %.3f s" % (", ".join(differed), seconds) if ok else
               "egress rules differ (%s) and could NOT be restored: %s" % (", ".join(differed), error))
    fields = {
        "MESSAGE": message,
        "PRIORITY": 4 if ok else 3,
        "SYSLOG_IDENTIFIER": "agentguard-guard",
        "AGENTGUARD_EVENT": "tamper",
        "AGENTGUARD_RESTORED": "yes" if ok else "no",
        "AGENTGUARD_DIFFERED": " ".join(differed),
        "AGENTGUARD_FAMILIES": " ".join(sorted(set(d.family for d in found))),
        "AGENTGUARD_TABLES": " ".join(sorted(set(d.table for d in found))),
        "AGENTGUARD_KINDS": " ".join(sorted(set(d.kind for d in found))),
        "AGENTGUARD_RESTORE_SECONDS": "%.3f" % seconds,
        "AGENTGUARD_POLICY_HASH": policy_hash_ or "",
    }
    if open_seconds is not None:
        fields["AGENTGUARD_OPEN_SECONDS"] = "%.3f" % open_seconds
    if error:
        fields["AGENTGUARD_ERROR"] = str(error)
    return fields


# The status file ---------------------------------------------------------------------------------

def new_status(previous, now, pid, events, interval):
    """The status at start: counters carried over from the previous status file (a restart of the
    guard does not reset what it counted), everything else fresh."""
    previous = previous if isinstance(previous, dict) and previous.get("version") == VERSION else {}
    return {
        "version": VERSION, "started": now, "pid": pid, "backend": None, "events": events,
        "interval_seconds": interval, "checks_total": 0, "last_check_timestamp": None,
        "tamper_events_total": int(previous.get("tamper_events_total", 0)),
        "tamper_events": list(previous.get("tamper_events", [])),
        "restore_failures_total": int(previous.get("restore_failures_total", 0)),
        "last_restore_timestamp": previous.get("last_restore_timestamp"),
        "last_restore_seconds": previous.get("last_restore_seconds"),
        "last_open_seconds": previous.get("last_open_seconds"),
        "last_event": previous.get("last_event"),
        "policy_hash": None, "applied_timestamp": None, "in_sync": None, "paused": None,
    }


def count_event(status, found, finished, seconds, open_seconds):
    status["tamper_events_total"] += 1
    by = dict(((e["kind"], e["family"], e["table"]), e["count"]) for e in status["tamper_events"])
    for d in found:
        by[(d.kind, d.family, d.table)] = by.get((d.kind, d.family, d.table), 0) + 1
    status["tamper_events"] = [dict(kind=k, family=f, table=t, count=c) for (k, f, t), c in sorted(by.items())]
    status["last_restore_timestamp"] = finished
    status["last_restore_seconds"] = round(seconds, 6)
    status["last_open_seconds"] = None if open_seconds is None else round(open_seconds, 6)
    status["last_event"] = {"time": finished, "differed": ["%s/%s/%s" % (d.family, d.table, d.kind) for d in found]}


def backend_of(save_text):
    """nf_tables or legacy, from iptables-save's header comment; None when it does not say."""
    for line in save_text.splitlines()[:3]:
        if "nf_tables" in line:
            return "nf_tables"
        if line.startswith("# Generated by"):
            return "legacy"
    return None


# The guard ---------------------------------------------------------------------------------------

class Guard(object):
    """One check (check_once) and the loop around it (run), on host (a HostIO of _hostio: its run and which drive
    _netfilter.Netfilter); clock and journal injectable for tests."""

    def __init__(self, host, state_dir=STATE_DIR, guard_dir=GUARD_DIR, interval=INTERVAL,
                 journal=send_journal, clock=time.time, metrics=None):
        self.nf = Netfilter(host.run, host.which)
        self.state_dir = state_dir
        self.guard_dir = guard_dir
        self.interval = interval
        self.journal = journal
        self.clock = clock
        self.metrics = metrics
        self.families = [f for f in ("ipv4", "ipv6") if f == "ipv4" or host.exists("/proc/net/if_inet6")]
        self.status = None
        self.restores = []  # the times of restorations that were fights (FIGHT_WINDOW)
        self.last_restore = None

    def path(self, name):
        return os.path.join(self.state_dir, name)

    def start(self, events):
        os.makedirs(self.guard_dir, exist_ok=True)
        try:
            previous = read_json(os.path.join(self.guard_dir, STATUS_FILE))
        except (IOError, OSError, ValueError):
            previous = None
        self.status = new_status(previous, self.clock(), os.getpid(), events, self.interval)
        self.save_status()

    def save_status(self):
        write_json(os.path.join(self.guard_dir, STATUS_FILE), self.status, mode=0o644)
        if self.metrics is not None:
            try:
                self.metrics(self.status)
            except Exception as exc:  # pylint: disable=broad-except
                # Metrics are a view: their failure must never stop the guard.
                sys.stderr.write("agentguard-guard: metrics not written: %s\n" % exc)

    def paused(self):
        """Why the guard must not act now (an apply in progress), or None."""
        try:
            age = self.clock() - os.stat(self.path(MARKER_FILE)).st_mtime
        except OSError:
            return None
        if age < MARKER_MAX_AGE:
            return "apply in progress (%s)" % self.path(MARKER_FILE)
        return None

    def check_once(self, event_time=None):
        """Compare and restore once; returns the differences found ([] when in sync or paused)."""
        started = time.monotonic()
        self.status["checks_total"] += 1
        self.status["last_check_timestamp"] = self.clock()
        reason = self.paused()
        if reason:
            self.status["paused"] = reason
            return []
        try:
            lock = os.open(self.path(LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            self.status["paused"] = "cannot open the lock: %s" % exc
            return []
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except (IOError, OSError):
                self.status["paused"] = "lock held (an apply, the rollback or the canary)"
                return []
            # Under the lock: the marker may have appeared while we waited.
            reason = self.paused()
            if reason:
                self.status["paused"] = reason
                return []
            self.status["paused"] = None
            return self._compare_and_restore(started, event_time)
        finally:
            os.close(lock)

    def _compare_and_restore(self, started, event_time):
        try:
            doc = read_json(self.path(DESIRED_FILE))
        except (IOError, OSError, ValueError) as exc:
            self.status["paused"] = "desired state unreadable: %s" % exc
            return []
        if doc is None:
            self.status.update(policy_hash=None, applied_timestamp=None, in_sync=None)
            return []
        try:
            desired = load_desired(doc)
            live, live_sets = read_live(self.nf, list(desired.families))
        except (GuardError, CommandError, ParseError, ValueError) as exc:
            self.status["paused"] = str(exc)
            return []
        self.status.update(policy_hash=desired.hash, applied_timestamp=desired.applied)
        found = differences(desired, live, live_sets)
        plan = restore_plan(desired, live, live_sets)
        if plan is None:
            self.status["in_sync"] = True
            return found
        error = None
        try:
            apply_plan(self.nf, plan)
        except (ApplyError, CommandError) as exc:
            error = exc
        seconds = time.monotonic() - started
        finished = self.clock()
        open_seconds = None if event_time is None else time.monotonic() - event_time
        found = found or [Difference("chain", desired.families[0], "filter")]
        if error is None:
            self.status["in_sync"] = True
            count_event(self.status, found, finished, seconds, open_seconds)
            now = time.monotonic()
            if self.last_restore is not None and started - self.last_restore < FIGHT_WINDOW:
                self.restores.append(now)
            self.last_restore = now
        else:
            self.status["in_sync"] = False
            self.status["restore_failures_total"] += 1
        self.journal(tamper_fields(found, seconds, open_seconds, desired.hash, error is None, error))
        return found

    def read_backend(self):
        try:
            self.status["backend"] = backend_of(self.nf.save("ipv4"))
        except CommandError:
            return
        if self.status["backend"] == "legacy":
            # The socket is open, but the legacy backend announces nothing on it.
            self.status["events"] = "periodic"
            self.interval = min(self.interval, LEGACY_INTERVAL)
            self.status["interval_seconds"] = self.interval

    def view(self):
        return tuple(self.status.get(key) for key in ("paused", "policy_hash", "in_sync", "backend"))

    def delay(self):
        """An extra wait before the next check while something fights us (BACKOFF_AFTER), else 0."""
        now = time.monotonic()
        self.restores = [t for t in self.restores if now - t < BACKOFF_WINDOW]
        return BACKOFF_DELAY if len(self.restores) > BACKOFF_AFTER else 0.0

    def run(self, events, stop=lambda: False):
        """The loop: check at start, then on every (debounced) event and every interval."""
        self.start("netlink" if events.sock is not None else "periodic")
        self.read_backend()
        self.check_once()
        self.save_status()
        notify_ready()
        last_status, last_view = time.monotonic(), self.view()
        next_check = time.monotonic() + self.interval
        while not stop():
            backoff = self.delay()
            if backoff:
                time.sleep(backoff)
                # What came meanwhile is looked at now, once.
                events.drain()
                next_check = time.monotonic()
            timeout = min(next_check, last_status + STATUS_PERIOD) - time.monotonic()
            event_time = events.wait(timeout)
            due = event_time is not None or time.monotonic() >= next_check
            found = []
            if due:
                found = self.check_once(event_time)
                # Paused (the lock or the marker): look again soon, the change may still be ours to undo.
                next_check = time.monotonic() + (PAUSED_RETRY if self.status["paused"] else self.interval)
                # Our own restore is announced too, and wakes the next wait: that check finds the host in
                # sync. Never drained unread: another change may have come during the restore.
            # Written when something happened or the view changed (a new desired state, a pause), and
            # on the period, so the metrics stay fresh.
            view = self.view()
            if found or view != last_view or time.monotonic() - last_status >= STATUS_PERIOD:
                self.save_status()
                last_status, last_view = time.monotonic(), view


def notify_ready(environ=None):
    """Tell systemd (Type=notify) that the first check is done: units ordered after the guard start then."""
    path = (environ if environ is not None else os.environ).get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.sendto(b"READY=1", path)
        return True
    except (OSError, IOError):
        return False
    finally:
        sock.close()


def subprocess_runner():
    """run(argv, data) -> (rc, out, err) with LC_ALL=C, for Netfilter on the host."""
    import subprocess
    env = dict(os.environ, LC_ALL="C")

    def run(argv, data=None):
        try:
            # The guard runs on the host without Ansible: no AnsibleModule.run_command there.
            stdin = subprocess.PIPE if data is not None else subprocess.DEVNULL
            proc = subprocess.Popen(  # pylint: disable=ansible-bad-function
                argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
            out, err = proc.communicate(data.encode("utf-8") if data is not None else None)
            return proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
        except OSError as exc:
            return 1, "", "could not run %s: %s" % (argv[0], exc)
    return run


def bin_path(name, required=False):
    for directory in os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin").split(os.pathsep):
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    if required:
        raise CommandError([name], 127, "", "%s not found in PATH" % name)
    return None


def main(argv=None):
    import argparse
    parser = argparse.ArgumentParser(prog="agentguard-guard", description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--state-dir", default=STATE_DIR, help="where egress_rules writes the desired state")
    parser.add_argument("--guard-dir", default=GUARD_DIR, help="where the guard keeps its status")
    parser.add_argument("--interval", type=float, default=INTERVAL, help="seconds between periodic checks")
    parser.add_argument("--no-events", action="store_true", help="periodic checks only (no netlink events)")
    parser.add_argument("--metrics-dir", default=None, help="node_exporter textfile directory (none: no metrics)")
    parser.add_argument("--once", action="store_true", help="check and restore once, then exit")
    parser.add_argument("--journal-socket", default=JOURNAL_SOCKET, help="the journal's native socket")
    args = parser.parse_args(argv)
    host = HostIO(subprocess_runner(), bin_path, lambda text: sys.stderr.write("agentguard-guard: %s\n" % text))
    metrics = metrics_writer(args.metrics_dir, host) if args.metrics_dir else None
    guard = Guard(host, args.state_dir, args.guard_dir, args.interval, metrics=metrics,
                  journal=lambda fields: send_journal(fields, args.journal_socket))
    if args.once:
        guard.start("periodic")
        guard.read_backend()
        guard.check_once()
        guard.save_status()
        return 1 if guard.status["in_sync"] is False else 0
    import signal
    stopping = []

    def stop(*unused):
        # Raised out of the wait (select restarts on a signal otherwise); a restore in progress is
        # one iptables-restore per table, each atomic.
        stopping.append(1)
        raise SystemExit(0)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    guard.run(EventSocket(enabled=not args.no_events), stop=lambda: bool(stopping))
    return 0


def metrics_writer(directory, host):
    """write(status): the metrics (_metrics) of host in directory/agentguard.prom, atomically; the refusal
    counters' cursors are kept between calls."""
    from ansible_collections.agentguard.hardening.plugins.module_utils import _metrics
    state = {}

    def write(status):
        if not os.path.isdir(directory):
            return  # node_exporter is not installed (yet): nothing reads the directory
        sample = _metrics.collect_sample(host, status, state)
        _metrics.write_atomic(os.path.join(directory, _metrics.FILE_NAME), _metrics.render(sample))
    return write
