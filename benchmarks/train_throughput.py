"""Training throughput: our trainer against OpenCLIP's (``python -m open_clip_train.main``), side by side.

    python benchmarks/train_throughput.py --precision fp32 bf16 --steps 60 --rounds 2

Both train the same architecture — one open_clip model config file (``tiny.json``, written from our
``tiny`` preset), which ours takes as ``model.name=tiny.json`` and OpenCLIP's as ``--model tiny`` after
``open_clip.add_model_config`` — on the same shards (``data/demo/train``, built if missing), with the same
global batch, optimizer settings and precision (fp32, or bf16 autocast: OpenCLIP's ``amp_bf16``).
Each trainer runs in its own process, alternating, in several settings (data workers, ``torch.compile``);
the table shows every run and the ratio of the best of each. Samples/s and the data-wait fraction come from
each trainer's own log over the steps after ``--skip`` (warm-up and compilation excluded): ours from
``metrics.jsonl``, OpenCLIP's from its ``Batch (t)`` / ``Data (t)`` lines.

Model FLOPs utilisation: forward + backward FLOPs of one sample at the full text context
(``torch.utils.flop_counter``, the same credit for both trainers although ours skips padding) times
samples/s, over the matmul peak measured here (4096³ ``torch.mm`` in the run's dtype).

OpenCLIP's trainer needs ``webdataset<=0.2.86`` (newer ones removed what it imports); it is installed with
``pip install --target`` into ``benchmarks/.open_clip_train_deps`` and put first on its ``PYTHONPATH`` only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEPS = ROOT / "benchmarks" / ".open_clip_train_deps"
OURS = {"workers0": ["data.workers=0"], "workers1": ["data.workers=1"],
        "workers0+compile": ["data.workers=0", "model.compile=true"],
        "workers1+compile": ["data.workers=1", "model.compile=true"]}
THEIRS = {"workers1": ["--workers", "1"], "workers0": ["--workers", "0"],
          "workers1+compile": ["--workers", "1", "--torchcompile"]}
OPEN_CLIP_MAIN = ("import runpy, sys, open_clip; open_clip.add_model_config(sys.argv.pop(1)); "
                  "sys.argv[0] = 'open_clip_train.main'; runpy.run_module('open_clip_train.main', run_name='__main__')")


def ensure_deps() -> None:
    if not (DEPS / "webdataset").is_dir():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(DEPS),
                        "webdataset==0.2.86"], check=True)


def ensure_shards(root: Path) -> Path:
    if not (root / "train" / "manifest.json").is_file():
        subprocess.run([sys.executable, "-m", "data_prep", "demo", "--out", str(root)], check=True, cwd=ROOT)
    return root / "train"


def shard_pattern(train: Path) -> str:
    names = [s["name"] for s in json.loads((train / "manifest.json").read_text())["shards"]]
    first, last = Path(names[0]).stem, Path(names[-1]).stem
    return f"{train}/{{{first}..{last}}}.tar"


def ours_command(cfg_file: Path, pattern: str, out: Path, args, precision: str, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "training", "--config", "training/configs/tiny.yaml", "--output", str(out),
            f"model.name={cfg_file}", f"data.train={pattern}", f"data.batch_size={args.batch}",
            f"schedule.steps={args.steps}", "schedule.warmup=10", "optim.lr=1e-3", "optim.weight_decay=0.1",
            "optim.grad_clip=1.0", "log.every=10", "checkpoint.every=0", "eval.retrieval=", "eval.zeroshot=", "eval.compositional=",
            f"precision={precision}", *extra]


def theirs_command(cfg_file: Path, pattern: str, out: Path, args, precision: str, extra: list[str]) -> list[str]:
    return [sys.executable, "-c", OPEN_CLIP_MAIN, str(cfg_file),
            "--train-data", pattern, "--dataset-type", "webdataset",
            "--train-num-samples", str(args.steps * args.batch), "--batch-size", str(args.batch), "--epochs", "1",
            "--model", cfg_file.stem, "--lr", "1e-3", "--wd", "0.1", "--warmup", "10", "--beta2", "0.98",
            "--eps", "1e-6", "--grad-clip-norm", "1.0",
            "--precision", {"fp32": "fp32", "bf16": "amp_bf16"}.get(precision, precision), "--log-every-n-steps", "10",
            "--logs", str(out), "--name", "run", "--save-frequency", "0", "--report-to", "", "--seed", "0", *extra]


def ours_rate(out: Path, skip: int, batch: int) -> tuple[float, float]:
    recs = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if "samples_per_s" in r and r["step"] > skip]
    seconds = sum(10 * batch / r["samples_per_s"] for r in recs)
    return 10 * batch * len(recs) / seconds, statistics.fmean(r["data_wait"] for r in recs)


LINE = re.compile(r"Train Epoch: \d+ \[\s*(\d+)/\d+.*Data \(t\): ([\d.]+) Batch \(t\): ([\d.]+)")


def theirs_rate(out: Path, skip: int, batch: int) -> tuple[float, float]:
    rows = [(int(n) // batch, float(d), float(b)) for n, d, b in LINE.findall((out / "run" / "out.log").read_text())]
    rows = [r for r in rows if r[0] > skip + 1]  # the first line covers step 1 alone
    step_time = statistics.fmean(b for _, _, b in rows)
    return batch / step_time, statistics.fmean(d for _, d, _ in rows) / step_time


def run(cmd: list[str], env: dict) -> None:
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")


def flops_per_sample(cfg: dict, batch: int = 8) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    import mmcontrast as mc
    model = mc.build_model(cfg)
    size = cfg["vision_cfg"]["image_size"]
    image = torch.randn(batch, 3, size, size)
    text = torch.randint(1, 1000, (batch, cfg["text_cfg"]["context_length"]))
    with FlopCounterMode(display=False) as counter:
        out = model(image, text)
        (out["image_features"].sum() + out["text_features"].sum()).backward()
    return counter.get_total_flops() / batch


def matmul_peak(dtype: torch.dtype, n: int = 4096, reps: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    t0 = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--skip", type=int, default=20, help="steps left out of the measurement (warm-up, compiling)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--data", type=Path, default=ROOT / "data" / "demo")
    p.add_argument("--ours", nargs="+", default=list(OURS), choices=list(OURS))
    p.add_argument("--theirs", nargs="+", default=list(THEIRS), choices=list(THEIRS))
    args = p.parse_args()
    import mmcontrast as mc
    ensure_deps()
    pattern = shard_pattern(ensure_shards(args.data))
    work = Path(tempfile.mkdtemp(prefix="throughput-"))
    cfg_file = work / "tiny.json"
    cfg_file.write_text(json.dumps(mc.PRESETS["tiny"]))
    env_ours = {**os.environ}
    env_theirs = {**os.environ, "PYTHONPATH": f"{DEPS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    flops = flops_per_sample(mc.PRESETS["tiny"])
    print(f"model: {cfg_file} (tiny), {flops / 1e9:.3f} GFLOP per sample (forward + backward); shards: {pattern}")
    print(f"ours:   {shlex.join(ours_command(cfg_file, pattern, work / 'OUT', args, 'PRECISION', ['SETTINGS']))}")
    print(f"theirs: PYTHONPATH={DEPS} "
          f"{shlex.join(theirs_command(cfg_file, pattern, work / 'OUT', args, 'PRECISION', ['SETTINGS']))}\n")
    results: dict[tuple, list] = {}
    for r in range(args.rounds):
        for precision in args.precision:
            for i in range(max(len(args.ours), len(args.theirs))):  # alternate: ours, theirs, ours, ...
                for tool, names, make, env, rate in (("ours", args.ours, ours_command, env_ours, ours_rate),
                                                     ("open_clip_train", args.theirs, theirs_command, env_theirs,
                                                      theirs_rate)):
                    if i >= len(names):
                        continue
                    settings = (OURS if tool == "ours" else THEIRS)[names[i]]
                    out = work / f"{tool}-{precision}-{names[i]}-{r}"
                    run(make(cfg_file, pattern, out, args, precision, settings), env)
                    results.setdefault((precision, tool, names[i]), []).append(rate(out, args.skip, args.batch))
                    sps, wait = results[(precision, tool, names[i])][-1]
                    print(f"round {r + 1} {precision} {tool} {names[i]}: {sps:.1f} samples/s, data wait "
                          f"{100 * wait:.1f}%", flush=True)
    print("\n| precision | trainer | settings | samples/s (median of rounds) | data wait | MFU |")
    print("|---|---|---|---:|---:|---:|")
    best = {}
    for precision in args.precision:
        peak = matmul_peak(torch.float32 if precision == "fp32" else torch.bfloat16)
        for (prec, tool, name), values in results.items():
            if prec != precision:
                continue
            sps = statistics.median(v[0] for v in values)
            wait = statistics.median(v[1] for v in values)
            mfu = sps * flops / peak
            print(f"| {precision} | {tool} | {name} | {sps:.1f} | {100 * wait:.1f}% | {100 * mfu:.1f}% |")
            if sps > best.get((precision, tool), (0, ""))[0]:
                best[(precision, tool)] = (sps, name)
        print(f"| {precision} | matmul peak | 4096³ torch.mm | {peak / 1e12:.2f} TFLOP/s | | |")
    print()
    for precision in args.precision:
        (ours, on), (theirs, tn) = best[(precision, "ours")], best[(precision, "open_clip_train")]
        print(f"{precision}: ours {ours:.1f} samples/s ({on}) / open_clip_train {theirs:.1f} ({tn}) = "
              f"{ours / theirs:.2f}×")


if __name__ == "__main__":
    main()
