# shellcheck shell=bash
# Sourced by the scripts in this folder: the project's virtualenv, Ansible config and podman config.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
export PATH="$VENV/bin:$PATH"
export ANSIBLE_CONFIG="$ROOT/ansible.cfg"
export CONTAINERS_CONF="$ROOT/lab/containers.conf"
