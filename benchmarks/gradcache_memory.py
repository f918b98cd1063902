"""Peak memory of one training step at a large global batch: plain backward vs GradCache.

    python benchmarks/gradcache_memory.py --batch 4096 --chunk 256

Each mode runs in a fresh process (so the peak resident set size is its own) on the `tiny` model:
the same random batch, one forward + backward in fp32, then the gradients are saved. Reported: the
peak RSS above the process's RSS just before the step (model, batch and libraries loaded), the step
time, and the largest difference between the two modes' gradients. CPU only; on a GPU the same
ratio shows in torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _rss_mb() -> float:
    return float(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20


def run_one(mode: str, batch_size: int, chunk: int, out: str) -> None:
    import torch

    import mmcontrast as mc
    from mmcontrast.gradcache import grad_cache_step

    torch.manual_seed(0)
    model = mc.create_model("tiny", seed=0).train()
    objective = mc.make_objective("clip")
    g = torch.Generator().manual_seed(1)
    batch = {"image": torch.randn(batch_size, 3, 64, 64, generator=g),
             "text": torch.randint(1, 49000, (batch_size, 32), generator=g)}
    before = _rss_mb()
    t0 = time.perf_counter()
    if mode == "plain":
        loss = objective(**model(batch["image"], batch["text"]))["loss"]
        loss.backward()
    else:
        loss = grad_cache_step(model, objective, batch, chunk, lambda: {"logit_scale": model.logit_scale.exp()})["loss"]
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    torch.save({n: p.grad for n, p in model.named_parameters()}, Path(out) / f"{mode}.pt")
    (Path(out) / f"{mode}.json").write_text(json.dumps({"loss": loss.item(), "seconds": seconds,
                                                        "peak_mb": peak, "before_mb": before}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--_mode", help=argparse.SUPPRESS)
    parser.add_argument("--_out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._mode:
        return run_one(args._mode, args.batch, args.chunk, args._out)
    import torch
    with tempfile.TemporaryDirectory() as out:
        for mode in ("plain", "gradcache"):
            subprocess.run([sys.executable, __file__, "--batch", str(args.batch), "--chunk", str(args.chunk),
                            "--_mode", mode, "--_out", out], check=True)
        r = {m: json.loads((Path(out) / f"{m}.json").read_text()) for m in ("plain", "gradcache")}
        ga, gb = (torch.load(Path(out) / f"{m}.pt") for m in ("plain", "gradcache"))
        diff = max((ga[k] - gb[k]).abs().max().item() for k in ga)
        rel = max(((ga[k] - gb[k]).norm() / ga[k].norm()).item() for k in ga if ga[k].norm() > 0)
    step = {m: r[m]["peak_mb"] - r[m]["before_mb"] for m in r}
    print("| mode | step peak memory above baseline (MiB) | process peak RSS (MiB) | step time (s) | loss |")
    print("|---|---:|---:|---:|---:|")
    for m in ("plain", "gradcache"):
        name = "plain full batch" if m == "plain" else f"GradCache, chunk {args.chunk}"
        print(f"| {name} | {step[m]:.0f} | {r[m]['peak_mb']:.0f} | {r[m]['seconds']:.1f} | {r[m]['loss']:.6f} |")
    print(f"\nbatch {args.batch}: GradCache step memory / plain = {step['gradcache'] / step['plain']:.3f}; "
          f"gradients: max |Δ| = {diff:.2e}, max relative (per tensor, L2) = {rel:.2e}")


if __name__ == "__main__":
    main()
