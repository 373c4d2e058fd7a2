# -*- coding: utf-8 -*-
# SPDX-License-Identifier: GPL-3.0-or-later
"""users-scope: root's egress is untouched. The same probes that are denied for the agent user
(test_blocked.py) all get through as root, and none of them is logged."""
import pytest

from conftest import BLOCKED, BLOCKED_IDS, blocked_run_as


@pytest.fixture(scope="module")
def root_run(target):
    return blocked_run_as(target, "root")


@pytest.mark.parametrize("probe", BLOCKED, ids=BLOCKED_IDS)
def test_root_is_not_restricted(target, root_run, probe):
    assert root_run.uid == 0
    result = root_run.results[probe["id"]]
    assert result["ok"], "root: %s was blocked (%s)" % (probe["what"], result)
    assert not root_run.lines(probe), "root's %s was logged as a denial" % probe["what"]
