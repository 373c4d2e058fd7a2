#!/bin/sh
# systemd-resolved's configuration and what it does with it, for prepare.yml and cleanup.yml
# (ansible.builtin.script): the resolv.conf link, the configuration files, the servers and domains in use.
set -e
echo "resolv.conf -> $(readlink /etc/resolv.conf)"
sha256sum /etc/systemd/resolved.conf
find /etc/systemd/resolved.conf.d -type f -exec sha256sum {} + 2>/dev/null | sort || true
systemctl is-enabled systemd-resolved.service
systemctl is-active systemd-resolved.service
resolvectl dns | sed -n 1p
resolvectl domain | sed -n 1p
