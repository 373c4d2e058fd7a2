"""molecule/shared/tests/probe.py: the verify step's reader of the probes' output fails when a probe
did not come back, so a test that loops over the results cannot pass with none.

The real probes run in the Molecule lab; this test feeds the reader main()'s real output for probes
that send nothing (getaddrinfo of a numeric address: no lookup, no packet).
"""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROBE_PY = os.path.join(ROOT, "molecule", "shared", "tests", "probe.py")
SPEC = importlib.util.spec_from_file_location("agentguard_molecule_probe", PROBE_PY)
probe = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(probe)

PROBES = [{"id": kind, "kind": "resolve", "family": 4, "host": "127.0.0.1"} for kind in ("a", "b")]


def _output(probes):
    """main()'s real output for `probes`."""
    return subprocess.run([sys.executable, PROBE_PY, json.dumps({"probes": probes})], check=True,
                          capture_output=True, text=True, timeout=60).stdout


def test_every_probe_came_back():
    uid, results = probe.probe_results(PROBES, _output(PROBES))
    assert uid == os.getuid()
    assert sorted(results) == ["a", "b"]
    assert all(r["detail"] == ["127.0.0.1"] for r in results.values()), results


@pytest.mark.parametrize("sent, ran", [
    (PROBES, PROBES[:1]),              # one result missing
    (PROBES, []),                      # none came back
    (PROBES[:1], PROBES),              # a result nobody asked for
    (PROBES + PROBES[:1], PROBES),     # an id sent twice: one result would hide the other
])
def test_a_missing_or_extra_result_fails(sent, ran):
    with pytest.raises(AssertionError, match="probes sent"):
        probe.probe_results(sent, _output(ran))
