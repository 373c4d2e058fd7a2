#!/bin/sh
# @MARKER@ (role egress); do not edit.
# Snapshot and on-host rollback of a safe apply (the semantics of iptables-apply):
#   save              snapshot the live filter tables and the module's ipsets (ag4-*, ag6-*)
#   arm ID            mark a rollback with the identifier ID as pending
#   restore ID [SECS] after SECS seconds, restore the snapshot if rollback ID is still pending
#   restore force     restore the snapshot now
#   disarm [ID]       cancel the pending rollback; with ID, fail (exit 3) when rollback ID has
#                     already run or was replaced, as the apply is then no longer in place
# The snapshot covers the filter table, the module's own chains in the mangle and nat tables
# (AGENTGUARD-*, and the jumps to them: the container networks' forward path, the TLS gate's and the
# filtering resolver's redirects) and the TLS gate's configuration and unit: other mangle and nat
# rules, other tables and sets that are not the module's are never touched. It also covers the guard's
# desired state (desired.json, written by egress_rules): restored with the rules, so the guard
# (agentguard-guard.service) holds the host to the snapshot's rules, never to the ones rolled back.
# restore takes the lock the guard and egress_rules share, and clears the marker of an apply that died.
set -u
umask 077
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH LC_ALL=C
@SETTINGS@
cd "$DIR" || exit 1

log() {
    logger -t agentguard-egress -- "$*" 2>/dev/null || true
    echo "$*" >&2
}

# Serialise arm, disarm and restore: a rollback that is disarmed cannot start afterwards.
lock() {
    exec 9>"$DIR/lock"
    flock -w 30 9
}

save() {
    set -e
    rm -f snapshot.v4 snapshot.v6 snapshot.ipset
    iptables-save -t filter > snapshot.v4.new
    mv snapshot.v4.new snapshot.v4
    if [ -e /proc/net/if_inet6 ]; then
        ip6tables-save -t filter > snapshot.v6.new
        mv snapshot.v6.new snapshot.v6
    fi
    if command -v ipset >/dev/null 2>&1; then
        ipset save | grep -E '^(create|add) ag[46]-' > snapshot.ipset.new || true
        mv snapshot.ipset.new snapshot.ipset
    fi
    for table in mangle nat; do
        rm -f "snapshot.$table.v4" "snapshot.$table.v6"
        iptables-save -t "$table" > "snapshot.$table.v4"
        if [ -e /proc/net/if_inet6 ]; then
            ip6tables-save -t "$table" > "snapshot.$table.v6"
        fi
    done
    # The TLS gate's files as they are (none: none), and whether it ran.
    rm -rf gate
    mkdir gate
    for f in $GATE_FILES; do
        if [ -e "$f" ]; then cp -p "$f" "gate/$(basename "$f")"; fi
    done
    if [ -d /run/systemd/system ] && systemctl is-active --quiet "$GATE_UNIT"; then touch gate/active; fi
    # The guard's desired state as it is (none: none).
    rm -f snapshot.desired
    if [ -e desired.json ]; then cp -p desired.json snapshot.desired; fi
    set +e
}

# restore_owned TABLE CMD SNAPSHOT: the module's chains in TABLE and the jumps to them back to the
# snapshot's, in one iptables-restore --noflush: today's chains are emptied (declared) and their jumps
# deleted, the snapshot's jumps inserted where the snapshot had them (among the rules of others, which
# stay; at most at the end of the chain as it is now), our chains' rules appended, and chains the
# snapshot did not have deleted.
restore_owned() {
    [ -f "$3" ] || return 0
    now=$("$2-save" -t "$1") || return 1
    {
        echo "*$1"
        { printf '%s\n' "$now"; cat "$3"; } | sed -n 's/^:\(AGENTGUARD-[^ ]*\) .*/:\1 - [0:0]/p' | sort -u
        printf '%s\n' "$now" | grep -E '^-A [^ ]+ .*-j AGENTGUARD-' | grep -vE '^-A AGENTGUARD-' | sed 's/^-A /-D /'
        printf '%s\n' "$now" | awk '
            NR == FNR { if ($1 == "-A" && $2 !~ /^AGENTGUARD-/ && $0 !~ / -j AGENTGUARD-/) others[$2]++; next }
            $1 == "-A" && $2 !~ /^AGENTGUARD-/ {
                chain = $2; seen[chain]++
                if ($0 !~ / -j AGENTGUARD-/) next
                at = seen[chain]; room = others[chain] + ours[chain] + 1
                if (at > room) at = room
                ours[chain]++
                rule = $0; sub(/^-A [^ ]+ /, "", rule)
                print "-I " chain " " at " " rule
            }' - "$3"
        grep -E '^-A AGENTGUARD-' "$3"
        for chain in $(printf '%s\n' "$now" | sed -n 's/^:\(AGENTGUARD-[^ ]*\) .*/\1/p'); do
            grep -q "^:$chain " "$3" || echo "-X $chain"
        done
        echo COMMIT
    } | "$2-restore" --noflush --wait
}

# The TLS gate's files back as the snapshot had them, and the gate running or not as it was.
restore_gate() {
    [ -d gate ] || return 0
    changed=0
    for f in $GATE_FILES; do
        kept="gate/$(basename "$f")"
        if [ -e "$kept" ]; then
            cmp -s "$kept" "$f" || { mkdir -p "$(dirname "$f")" && cp -p "$kept" "$f" && changed=1; }
        elif [ -e "$f" ]; then
            rm -f "$f" && changed=1
        fi
    done
    [ -d /run/systemd/system ] || return 0
    [ "$changed" = 0 ] || systemctl daemon-reload
    if [ -e gate/active ]; then
        if [ "$changed" = 1 ] || ! systemctl is-active --quiet "$GATE_UNIT"; then systemctl restart "$GATE_UNIT"; fi
    else
        systemctl stop "$GATE_UNIT" >/dev/null 2>&1 || true
    fi
}

disarm() {
    rm -f armed
    if [ -d /run/systemd/system ]; then
        systemctl stop "$UNIT.timer" >/dev/null 2>&1
        systemctl reset-failed "$UNIT.timer" "$UNIT.service" >/dev/null 2>&1
    fi
    return 0
}

restore() {
    rc=0
    [ -f snapshot.v4 ] || { log "no snapshot in $DIR, nothing restored"; return 1; }
    if [ -s snapshot.ipset ]; then
        # Put the module's sets back to their snapshot contents before the rules that use them.
        sed -e 's/^create \([^ ]*\) .*/&\nflush \1/' snapshot.ipset | ipset restore -exist || rc=1
    fi
    iptables-restore --wait < snapshot.v4 || rc=1
    if [ -f snapshot.v6 ]; then
        ip6tables-restore --wait < snapshot.v6 || rc=1
    fi
    # Before the sets go: the mangle forward path may reference sets made after the snapshot.
    for table in mangle nat; do
        restore_owned "$table" iptables "snapshot.$table.v4" || rc=1
        restore_owned "$table" ip6tables "snapshot.$table.v6" || rc=1
    done
    restore_gate || rc=1
    # What the guard holds the host to: the snapshot's desired state, or none.
    if [ -e snapshot.desired ]; then
        cp -p snapshot.desired desired.json.new && mv desired.json.new desired.json || rc=1
    else
        rm -f desired.json
    fi
    rm -f applying
    if command -v ipset >/dev/null 2>&1; then
        # Sets created after the snapshot are no longer referenced: remove them.
        for set in $(ipset list -n | grep -E '^agt?[46]-'); do
            grep -q "^create $set " snapshot.ipset 2>/dev/null || ipset destroy "$set" || rc=1
        done
    fi
    date -u '+%Y-%m-%dT%H:%M:%SZ' > rolled-back
    if [ "$rc" -eq 0 ]; then
        log "egress rules rolled back to the snapshot of $(date -u -r snapshot.v4 '+%Y-%m-%dT%H:%M:%SZ')"
    else
        log "egress rollback FAILED in part: check iptables-save, ip6tables-save and ipset list"
    fi
    return "$rc"
}

case "${1:-}" in
    save)
        lock
        save
        ;;
    arm)
        lock
        disarm
        printf '%s\n' "${2:?arm needs an identifier}" > armed
        ;;
    disarm)
        lock
        if [ -n "${2:-}" ] && [ "$(cat armed 2>/dev/null)" != "$2" ]; then
            echo "rollback $2 is no longer pending: the snapshot was restored at $(cat rolled-back 2>/dev/null || echo '?')" >&2
            exit 3
        fi
        disarm
        ;;
    restore)
        id=${2:?restore needs an identifier or force}
        delay=${3:-0}
        if [ "$delay" -gt 0 ]; then
            sleep "$delay"
        fi
        lock
        if [ "$id" != force ] && [ "$(cat armed 2>/dev/null)" != "$id" ]; then
            exit 0
        fi
        # Whoever restores first cancels the other path (timer or Ansible's rescue).
        disarm
        restore
        ;;
    *)
        echo "usage: $0 save | arm ID | disarm | restore ID|force [SECONDS]" >&2
        exit 2
        ;;
esac
