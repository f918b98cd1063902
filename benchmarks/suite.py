"""``python -m eval suite`` against CLIP_benchmark's CLI: the same datasets, files, model and settings.

    python benchmarks/suite.py                        # writes benchmarks/suite.md
    python benchmarks/suite.py --datasets eurosat fer2013 --output /tmp/suite.md

Builds one datasets folder holding ten classification sets in their published layouts (``tests/layouts``:
MNIST's IDX files, FER2013's Kaggle folders, DTD, Oxford-IIIT Pet, EuroSAT, GTSRB, Caltech-101, Country211,
Rendered SST2 and VOC 2007 box crops; every class of each, 100–211 test images of at most 64 px) and a random
``tiny`` model directory (``mc.create_model("tiny", seed=0)``), which open_clip loads as ``local-dir:DIR``. Its
image tower's positional and class embeddings are zeroed: at random init they outweigh the pixels, and the model
gives nearly every image one class, so that equal metrics would say little. Then
runs, one after the other, each in a fresh process under the same ``OMP_NUM_THREADS``:

- ours: ``python -m eval suite --model DIR --root ROOT --tasks zeroshot --datasets ...`` (embedding cache off);
- CLIP_benchmark 1.6.2: ``python -m clip_benchmark.cli eval --task zeroshot_classification --model
  local-dir:DIR --dataset ... --dataset_root VIEW/{dataset} --no_amp``, where ``VIEW/<name>`` links to the folder
  its builder expects for each dataset (``tests/layouts/suite_root.clip_benchmark_view``): the same files.

Both get the same batch size and loader workers, fp32 on the CPU (CLIP_benchmark's default autocast would run
bfloat16 there). Time is wall-clock from start to exit, model loading and dataset opening included; peak memory
is the largest sum of resident set sizes over the process and its children, polled every 20 ms (and the main
process's own ``ru_maxrss``). CLIP_benchmark's CLI cannot finish a zero-shot run under NumPy 2 (its ``accuracy``
calls ``float()`` on a one-element array); ``clip-benchmark`` below runs its CLI with that one function replaced
by the same computation ending in ``.item()``, and changes nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

POLL_S = 0.02
METRICS = ("acc1", "mean_per_class_recall")


def clip_benchmark_main(argv: list[str]) -> int:
    """CLIP_benchmark's CLI with its NumPy-2-broken ``accuracy`` replaced by the same count, read with ``.item()``."""
    from clip_benchmark import cli
    from clip_benchmark.metrics import zeroshot_classification

    def accuracy(output, target, topk=(1,)):
        pred = output.topk(max(topk), 1, True, True)[1].t()
        correct = pred.eq(target.view(1, -1).expand_as(pred))
        return [correct[:k].reshape(-1).float().sum().item() / len(target) for k in topk]

    zeroshot_classification.accuracy = accuracy
    sys.argv = ["clip_benchmark", *argv]
    return cli.main()


def measure(cmd: list[str], env: dict, log: Path) -> dict:
    """Run ``cmd``; its wall time, the peak summed RSS of its process tree and its own ``ru_maxrss`` (bytes)."""
    import psutil

    with open(log, "w") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        parent, peak = psutil.Process(proc.pid), 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            try:
                tree = [parent, *parent.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:  # a child exited between listing and reading
                pass
            time.sleep(POLL_S)
        seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{shlex.join(cmd)} failed ({proc.returncode}); its output is in {log}:\n"
                         + log.read_text()[-3000:])
    return {"seconds": seconds, "peak_rss": peak, "maxrss": usage.ru_maxrss * 1024}


def build(work: Path, datasets: list[str]) -> tuple[Path, Path, str, dict[str, int]]:
    """The shared datasets root, the model directory, CLIP_benchmark's ``--dataset_root`` template and the test
    images (VOC 2007: box crops) of each dataset."""
    import torch

    import mmcontrast as mc
    from tests.layouts.suite_root import BENCHMARK_SCALE, clip_benchmark_view, write_suite_root

    root, model = work / "datasets", work / "tiny"
    expected = write_suite_root(root, {name: BENCHMARK_SCALE[name] for name in datasets})
    tiny = mc.create_model("tiny", seed=0)
    with torch.no_grad():  # image features that depend on the image (see the module docstring)
        tiny.visual.positional_embedding.zero_()
        tiny.visual.class_embedding.zero_()
    mc.save_model_dir(tiny, model)
    images = {name: len(expected[name]["test"]["labels"]) for name in datasets}
    return root, model, clip_benchmark_view(root, work / "clip_benchmark_roots", datasets), images


def commands(args, root: Path, model: Path, template: str, out: Path) -> dict[str, list[str]]:
    ours = [sys.executable, "-m", "eval", "suite", "--model", str(model), "--root", str(root), "--output",
            str(out / "ours"), "--tasks", "zeroshot", "--datasets", *args.datasets, "--batch-size",
            str(args.batch_size), "--workers", str(args.workers), "--device", "cpu", "--cache-dir", ""]
    theirs = [sys.executable, str(Path(__file__).resolve()), "clip-benchmark", "eval", "--task",
              "zeroshot_classification", "--model", f"local-dir:{model}", "--pretrained", "tiny", "--dataset",
              *args.datasets, "--dataset_root", template, "--output", str(out / "clip_benchmark" / "{dataset}.json"),
              "--batch_size", str(args.batch_size), "--num_workers", str(args.workers), "--no_amp"]
    return {"ours": ours, "clip_benchmark": theirs}


def results(out: Path, datasets: list[str]) -> dict[str, dict[str, dict]]:
    """tool → dataset → metrics, from each tool's JSON files."""
    def read(path: Path) -> dict:
        return json.loads(path.read_text())["metrics"]
    return {"ours": {d: read(out / "ours" / "model" / "zeroshot" / f"{d}.json") for d in datasets},
            "clip_benchmark": {d: read(out / "clip_benchmark" / f"{d}.json") for d in datasets}}


def _gib(n: float) -> str:
    return f"{n / 2 ** 30:.2f} GiB"


def report(args, runs: dict, metrics: dict, images: dict[str, int], cmds: dict[str, list[str]], work: Path,
           load: float) -> str:
    ours, theirs = runs["ours"], runs["clip_benchmark"]
    lines = ["# `python -m eval suite` vs CLIP_benchmark's CLI (zero-shot classification)", "",
             "Written by `python benchmarks/suite.py` (its docstring says what is measured and how). The same",
             "files, model (random `tiny`, seed 0, image tower without positional embedding), batch size "
             f"{args.batch_size}, {args.workers} loader workers, OMP_NUM_THREADS={args.threads}, fp32 on the CPU; "
             f"{platform.machine()}, {os.cpu_count()} cores, load average {load:.2f} at the start.", "",
             "| dataset | test images | ours acc1 | CLIP_benchmark acc1 | \\|Δ\\| | ours mean per-class recall "
             "| CLIP_benchmark mean per-class recall | \\|Δ\\| |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    worst = 0.0
    for d in args.datasets:
        a, b = metrics["ours"][d], metrics["clip_benchmark"][d]
        cells = []
        for m in METRICS:
            delta = abs(a[m] - b[m])
            worst = max(worst, delta)
            cells += [f"{a[m]:.4f}", f"{b[m]:.4f}", f"{delta:.1e}" if delta else "0"]
        lines.append(f"| {d} | {images[d]:,} | " + " | ".join(cells) + " |")
    why = (" Ours holds its metrics as float32 (0.1 is stored as 0.10000000149), CLIP_benchmark divides Python "
           "numbers in float64: a |Δ| below 1e-6 is that rounding, the same predictions." if worst < 1e-6 else
           " **The tools disagree**: see each tool's log in the working folder.")
    lines += ["", f"Largest |Δ| over both metrics: {worst:.1e}.{why}", "",
              "| | ours | CLIP_benchmark | CLIP_benchmark / ours |", "|---|---:|---:|---:|",
              f"| wall time | {ours['seconds']:.1f} s | {theirs['seconds']:.1f} s | "
              f"{theirs['seconds'] / ours['seconds']:.2f}× |",
              f"| peak RSS (process tree) | {_gib(ours['peak_rss'])} | {_gib(theirs['peak_rss'])} | "
              f"{theirs['peak_rss'] / ours['peak_rss']:.2f}× |",
              f"| ru_maxrss (main process) | {_gib(ours['maxrss'])} | {_gib(theirs['maxrss'])} | "
              f"{theirs['maxrss'] / ours['maxrss']:.2f}× |", "",
              "The two commands (`$WORK`: the benchmark's working folder):", "", "```"]
    for cmd in cmds.values():
        line = f"OMP_NUM_THREADS={args.threads} MKL_NUM_THREADS={args.threads} {shlex.join(cmd)}"
        lines.append(line.replace(str(work), "$WORK").replace(sys.executable, "python").replace(f"{ROOT}/", ""))
    lines += ["```", ""]
    return "\n".join(lines)


def main() -> None:
    if sys.argv[1:2] == ["clip-benchmark"]:
        sys.exit(clip_benchmark_main(sys.argv[2:]))
    from tests.layouts.suite_root import BENCHMARK_SCALE

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=list(BENCHMARK_SCALE), choices=list(BENCHMARK_SCALE))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0, help="loader workers, both tools (default: 0)")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS, both tools (default: 1)")
    p.add_argument("--work", type=Path, default=None, help="an empty or new working folder, kept (default: a temporary one)")
    p.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "suite.md")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        if args.work and work.exists() and any(work.iterdir()):
            raise SystemExit(f"--work {work}: not empty; give a new or empty folder")
        root, model, template, images = build(work, args.datasets)
        out = work / "runs"
        (out / "clip_benchmark").mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
               "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
        cmds = commands(args, root, model, template, out)
        runs, load = {}, os.getloadavg()[0]
        for name, cmd in cmds.items():
            print(f"OMP_NUM_THREADS={args.threads} {shlex.join(cmd)}", flush=True)
            runs[name] = measure(cmd, env, work / f"{name}.log")
            print(f"  {runs[name]['seconds']:.1f} s, peak {_gib(runs[name]['peak_rss'])}", flush=True)
        text = report(args, runs, results(out, args.datasets), images, cmds, work, load)
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
