"""What ``pip install .`` installs: the built wheel holds every config in the source tree, and each one
loads from the installed package, run from another folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mmcontrast", "training", "eval", "data_prep")
CONFIGS = ("training/configs/**/*.yaml", "training/accelerate/*.yaml")

# Run inside the installed package, from a folder holding no configs: every training config by the
# path the README gives it, and by its short name; the accelerate configs through accelerate's loader.
LOAD_ALL = """
import json, pathlib, sys
import training
from training.config import load_config, shipped_configs
from accelerate.commands.config.config_args import load_config_from_file
package = pathlib.Path(training.__file__).parent
out = {"package": str(package), "steps": {}, "accelerate": {}}
for name in shipped_configs():
    by_path = load_config(f"training/configs/{name}.yaml")
    assert load_config(name) == by_path, name
    out["steps"][name] = by_path.schedule.steps
for path in sorted((package / "accelerate").glob("*.yaml")):
    out["accelerate"][path.name] = str(load_config_from_file(str(path)).distributed_type)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the sources, offline, with this environment's setuptools."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for package in PACKAGES:  # a copy, so the build writes no build/ or egg-info into the working tree
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                           "--no-index", "-q", "-w", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = out.glob("mmcontrast-*.whl")
    return path


def _source_configs() -> set[str]:
    return {p.relative_to(ROOT).as_posix() for pattern in CONFIGS for p in ROOT.glob(pattern)}


def test_the_wheel_holds_every_config_of_the_source_tree(wheel):
    expected = _source_configs()
    assert {"training/configs/tiny.yaml", "training/configs/objectives/siglip.yaml",
            "training/accelerate/multi_gpu.yaml", "training/accelerate/multi_node.yaml"} <= expected
    in_wheel = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".yaml")}
    assert in_wheel == expected


def test_every_config_loads_from_the_installed_package_in_another_folder(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run([sys.executable, "-c", LOAD_ALL], cwd=elsewhere, capture_output=True, text=True,
                          timeout=120, env={**_env(), "PYTHONPATH": str(site)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.splitlines()[-1])
    assert Path(loaded["package"]) == site / "training"  # the installed copy, not the working tree
    names = {p.removeprefix("training/configs/").removesuffix(".yaml") for p in _source_configs()
             if p.startswith("training/configs/")}
    assert set(loaded["steps"]) == names
    assert loaded["steps"]["tiny"] == 420 and loaded["steps"]["objectives/siglip"] == 420
    assert loaded["accelerate"] == {"multi_gpu.yaml": "DistributedType.MULTI_GPU",
                                    "multi_node.yaml": "DistributedType.MULTI_GPU"}


def test_a_config_found_nowhere_names_every_place_tried(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    proc = subprocess.run([sys.executable, "-m", "training", "--config", "tiy", "--output", str(tmp_path / "run")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**_env(), "PYTHONPATH": str(site)})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: config file not found: tiy (tried {tmp_path / 'tiy'} and "
                           f"{site / 'training' / 'configs' / 'tiy.yaml'}; shipped configs: objectives/clip_seed1, ")
    shipped = sorted(p.relative_to(ROOT / "training/configs").with_suffix("").as_posix()
                     for p in (ROOT / "training/configs").glob("**/*.yaml"))
    assert line.endswith(f"shipped configs: {', '.join(shipped)})")
    assert not (tmp_path / "run").exists()


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
