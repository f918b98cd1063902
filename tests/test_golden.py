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


def assert_same(actual, expected, where: str = "", scale: float | None = None) -> None:
    """Equal structure; float digests equal bit for bit on the recording platform. Elsewhere each tensor's sum
    agrees to 1e-4 of the digest's largest sum: float32 rounding moves them by ~3e-5 of it between an AMD EPYC
    and an Intel Xeon with AMX (a sum that cancels to ~0 has no relative precision), a bug by far more."""
    if isinstance(expected, dict) and "sha256" in expected and not SAME_PLATFORM:
        assert sorted(actual["sums"]) == sorted(expected["sums"]), where
        tol = 1e-4 * max((abs(v) for v in expected["sums"].values()), default=0.0) if scale is None else scale
        for k, v in expected["sums"].items():
            assert actual["sums"][k] == pytest.approx(v, rel=1e-4, abs=tol + 1e-9), f"{where}.{k}"
    elif isinstance(expected, dict):
        assert sorted(actual) == sorted(expected), where
        for k in expected:
            assert_same(actual[k], expected[k], f"{where}.{k}", second_step_scale(expected, k))
    elif isinstance(expected, list):
        assert len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_same(a, e, f"{where}[{i}]")
    elif isinstance(expected, str) and expected.startswith(("0x", "-0x")) and not SAME_PLATFORM:
        assert float.fromhex(actual) == pytest.approx(float.fromhex(expected), rel=1e-4, abs=1e-6), where
    else:
        assert actual == expected, where


def second_step_scale(record: dict, key: str) -> float | None:
    """Off the recording platform, the tolerance of the gradients after one AdamW step: 1e-3 of the first step's
    largest gradient sum. Adam divides each gradient element by its own magnitude, so rounding-level differences
    in near-zero first-step gradients become step-sized parameter differences, and the second step's total (a sum
    that mostly cancels) moves by ~2e-4 of the first step's scale between processors."""
    if key != "grads2" or "grads1" not in record:
        return None
    return 1e-3 * max((abs(v) for v in record["grads1"]["sums"].values()), default=0.0)


@pytest.mark.parametrize("name", sorted(golden.CASES))
def test_objective_matches_the_golden_record(name):
    assert_same(golden.objective_record(name), RECORDED["objectives"][name], name)


def test_loader_matches_the_golden_record(small_demo):
    record = golden.loader_record(small_demo)
    assert_same(record, RECORDED["loader"], "loader")
    for stream in record.values():  # and a resumed stream is the uninterrupted one's tail
        cut = len(stream["batches"]) - len(stream["resumed"])
        assert [b["keys"] for b in stream["resumed"]] == [b["keys"] for b in stream["batches"][cut:]]
