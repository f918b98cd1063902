"""Every objective and the loader give the numbers recorded in ``tests/golden/objectives_loader.json``.

The file was recorded before the objective interface and the loader were restructured; the structure may
change, these numbers may not (``tests/golden.py`` says how they are made and when to re-record them).
"""

from __future__ import annotations

import json

import pytest

from . import golden

RECORDED = json.loads(golden.GOLDEN.read_text())
SAME_PLATFORM = RECORDED["platform"] == golden.platform()


def assert_same(actual, expected, where: str = "") -> None:
    """Equal structure; float digests equal bit for bit on the recording platform, their sums to 1e-4 elsewhere."""
    if isinstance(expected, dict) and "sha256" in expected and not SAME_PLATFORM:
        assert sorted(actual["sums"]) == sorted(expected["sums"]), where
        for k, v in expected["sums"].items():
            assert actual["sums"][k] == pytest.approx(v, rel=1e-4, abs=1e-6), f"{where}.{k}"
    elif isinstance(expected, dict):
        assert sorted(actual) == sorted(expected), where
        for k in expected:
            assert_same(actual[k], expected[k], f"{where}.{k}")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_same(a, e, f"{where}[{i}]")
    elif isinstance(expected, str) and expected.startswith(("0x", "-0x")) and not SAME_PLATFORM:
        assert float.fromhex(actual) == pytest.approx(float.fromhex(expected), rel=1e-4, abs=1e-6), where
    else:
        assert actual == expected, where


@pytest.mark.parametrize("name", sorted(golden.CASES))
def test_objective_matches_the_golden_record(name):
    assert_same(golden.objective_record(name), RECORDED["objectives"][name], name)


def test_loader_matches_the_golden_record(small_demo):
    record = golden.loader_record(small_demo)
    assert_same(record, RECORDED["loader"], "loader")
    for stream in record.values():  # and a resumed stream is the uninterrupted one's tail
        cut = len(stream["batches"]) - len(stream["resumed"])
        assert [b["keys"] for b in stream["resumed"]] == [b["keys"] for b in stream["batches"][cut:]]
