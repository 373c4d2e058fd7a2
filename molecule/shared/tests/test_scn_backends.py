# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""backends: the rules land in the iptables backend that update-alternatives selected (prepare),
and the other backend holds none of them."""
import pytest

OTHER = {"nft": "legacy", "legacy": "nft"}
VERSION = {"nft": "(nf_tables)", "legacy": "(legacy)"}


@pytest.fixture
def backend(target):
    return target.vars["mol_iptables_backend"]


def test_selected_backend_in_use(target, backend, family):
    cmd = "iptables" if family == 4 else "ip6tables"
    assert VERSION[backend] in target.check_output("%s -V", cmd)


def test_rules_in_the_selected_backend_only(target, backend, family):
    save = "iptables-%s-save" if family == 4 else "ip6tables-%s-save"
    used = target.check_output("%s -t filter" % (save % backend))
    assert "-A OUTPUT -j AGENTGUARD-EGRESS" in used
    assert "-A AGENTGUARD-DENY " in used
    other = target.run("%s -t filter" % (save % OTHER[backend]))
    assert "AGENTGUARD" not in other.stdout, "%s holds managed rules too" % (save % OTHER[backend])
