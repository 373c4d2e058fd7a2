#!/bin/sh
# Entry point of ag-time, the lab's NTP server (run by lab/lab.sh under `podman run --init`):
#   time.sh
# chronyd from the lab image's offline repository (/opt/lab-apt), unpacked with dpkg-deb -x, not
# installed: `-x` (it never touches the clock, the container has no CAP_SYS_TIME), `local stratum 8`
# (it serves its own clock, no upstream) and `allow all` (every lab client, IPv4 and IPv6).
# ntplog.py then logs every NTP datagram that reaches the container's interface (a packet socket,
# CAP_NET_RAW), one line each, so a test can prove that a blocked packet never arrived: chronyd
# itself keeps only per-address counters (`chronyc clients`), which cannot tell two processes of
# one host apart.
set -eu
mkdir -p /var/log/lab /opt/chrony /run/chrony /var/lib/chrony
deb=$(ls /opt/lab-apt/chrony_*.deb)
dpkg-deb -x "$deb" /opt/chrony
cat > /run/chrony/chrony.conf <<'CONF'
allow all
local stratum 8
driftfile /var/lib/chrony/chrony.drift
CONF
# -u root: the package's user _chrony does not exist here (nothing is installed); -l: its own log.
/opt/chrony/usr/sbin/chronyd -x -u root -f /run/chrony/chrony.conf -l /var/log/lab/chronyd.log
exec python3 /lab/services/ntplog.py --name time --port 123 --log /var/log/lab/labserver.log
