# shellcheck shell=bash
# Common settings of the agentguard lab; sourced by lab/*.sh and usable by tests:
#   . lab/env.sh; podman ps
LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LAB_STATE=${LAB_STATE:-$LAB_DIR/.state}
export LAB_DIR LAB_STATE
export CONTAINERS_CONF="$LAB_DIR/containers.conf"

export LAB_IMAGE_REPO=localhost/agentguard-lab
export LAB_NET=agentguard-lab
export LAB_NET4=198.18.0.0/24 LAB_NET4_RANGE=198.18.0.128/25 LAB_GW4=198.18.0.1
export LAB_NET6=fd00:a9e:1::/64 LAB_NET6_RANGE=fd00:a9e:1::1:0/112 LAB_GW6=fd00:a9e:1::1
export LAB_RESOLVER4=198.18.0.53 LAB_RESOLVER6=fd00:a9e:1::53
export LAB_API4=198.18.0.10 LAB_API6=fd00:a9e:1::10
export LAB_RATES4=198.18.0.11 LAB_RATES6=fd00:a9e:1::11
export LAB_FORBIDDEN4=198.18.0.66 LAB_FORBIDDEN6=fd00:a9e:1::66
export LAB_SIBLING4=198.18.0.99 LAB_SIBLING6=fd00:a9e:1::99
export LAB_AGENT4=198.18.0.20 LAB_AGENT6=fd00:a9e:1::20
export LAB_CA="$LAB_STATE/ca.crt"
