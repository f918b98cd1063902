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


# The program itself under a guard that reports whether torch was imported by the time it exited.
NO_TORCH = ("import runpy, sys\nsys.argv = ['python -m training', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('training', run_name='__main__')\n"
            "finally:\n    print('torch imported:', 'torch' in sys.modules, file=sys.stderr)\n")


@pytest.mark.parametrize("args, status", [
    (["--help"], 0),
    (["--help-config"], 0),
    (["--output", "{tmp}/run", "train.steps=30"], 2),
    (["--output", "{tmp}", "schedule.steps=30"], 2),  # a run directory that is not empty
])
def test_help_typos_and_refusals_answer_before_torch_is_imported(tmp_path, args, status):
    (tmp_path / "notes.txt").write_text("mine")
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, *[a.format(tmp=tmp_path) for a in args]],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == status, proc.stderr
    assert proc.stderr.splitlines()[-1] == "torch imported: False"


def test_help_is_plain_text_naming_the_config_keys_listing():
    out = subprocess.run([sys.executable, "-m", "training", "--help"], capture_output=True, text=True,
                         timeout=60).stdout
    assert "`" not in out and "--help-config" in out and "--overwrite" in out and "--resume" in out


def test_a_key_in_the_wrong_section_is_refused_with_the_right_one():
    proc = subprocess.run([sys.executable, "-m", "training", "--output", "unused", "train.steps=30"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr == ("error: unknown config key train.steps; did you mean "
                                                    "schedule.steps? (python -m training --help-config lists "
                                                    "every key)\n")
