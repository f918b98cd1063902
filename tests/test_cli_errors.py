"""User mistakes end with one clear line naming the thing, exit status 2, and no stack trace."""

from __future__ import annotations

import subprocess
import sys

import pytest

CASES = [
    (["training", "--config", "training/configs/tiny.yaml", "--output", "{tmp}/run",
      "data.train={tmp}/missing-{{000..002}}.tar"], "error: shard not found: {tmp}/missing-000.tar"),
    (["training", "--config", "training/configs/tiny.yaml", "--output", "{tmp}/run", "optim.lrate=1"],
     "error: unknown config key optim.lrate"),
    (["training", "--config", "training/configs/tiny.yaml", "--output", "{tmp}/run", "data.batch_size=big"],
     "error: config key data.batch_size expects int, got 'big'"),
    (["eval", "zeroshot", "--model", "{tmp}/no-model", "--dataset", "wds:{tmp}", "--output", "{tmp}/o.json"],
     "error: "),
    (["eval", "retrieval", "--model", "{tmp}/no-model", "--dataset", "wds:{demo}/retrieval",
      "--output", "{tmp}/o.json"], "error: model not found: {tmp}/no-model"),
]


@pytest.mark.parametrize("argv, expected", CASES)
def test_one_clear_line(argv, expected, tmp_path, small_demo):
    fill = dict(tmp=tmp_path, demo=small_demo)
    proc = subprocess.run([sys.executable, "-m", *[a.format(**fill) for a in argv]],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(expected.format(**fill)), lines[0]
    assert "Traceback" not in proc.stderr
