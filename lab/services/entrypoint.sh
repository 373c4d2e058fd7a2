#!/bin/sh
# Entry point of the lab service containers (run under `podman run --init`, catatonit is PID 1):
#   entrypoint.sh ROLE [labserver.py flags...]
# ROLE resolver / forbidden also starts dnsmasq (trusted / rogue configuration) before the servers.
set -eu
role=$1
shift
mkdir -p /var/log/lab
case "$role" in
  resolver) dnsmasq --conf-file=/lab/services/dnsmasq-trusted.conf ;;
  forbidden) dnsmasq --conf-file=/lab/services/dnsmasq-rogue.conf ;;
esac
exec python3 /lab/services/labserver.py --name "$role" --log /var/log/lab/labserver.log "$@"
