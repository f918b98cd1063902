"""Exact recall@1/5/10 on large galleries: our chunked evaluator against CLIP_benchmark's full matrix.

    python benchmarks/retrieval_scale.py --sizes 10000 20000 100000 --dim 64
    python benchmarks/retrieval_scale.py --sizes 1000000 --dim 64 --device cuda --skip-reference

Each measurement runs in a fresh subprocess so its peak resident memory (``ru_maxrss``) is its own.
N images and N captions (one per image) of random unit vectors; the same embeddings go to both tools.
CLIP_benchmark's metric code (``zeroshot_retrieval.recall_at_k`` through ``batchify``, as its
``evaluate`` calls it) needs the full N×N score matrix; it is skipped where that would not fit.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def embeddings(n: int, dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(img + 0.45 * torch.randn(n, dim, generator=g), dim=-1)  # noisy captions
    return img, txt, torch.arange(n)


def run_ours(n, dim, chunk, device):
    from mmcontrast.metrics import retrieval_metrics
    img, txt, t2i = embeddings(n, dim)
    t0 = time.perf_counter()
    metrics = retrieval_metrics(img.to(device), txt.to(device), t2i.to(device), chunk_size=chunk)
    return metrics, time.perf_counter() - t0


def run_reference(n, dim, chunk, device):
    from clip_benchmark.metrics.zeroshot_retrieval import batchify, recall_at_k
    img, txt, t2i = embeddings(n, dim)
    t0 = time.perf_counter()
    scores = txt @ img.T
    positive = torch.zeros_like(scores, dtype=torch.bool)
    positive[torch.arange(n), t2i] = True
    metrics = {}
    for k in (1, 5, 10):
        metrics[f"image_retrieval_recall@{k}"] = (batchify(recall_at_k, scores, positive, chunk, device, k=k) > 0
                                                  ).float().mean().item()
        metrics[f"text_retrieval_recall@{k}"] = (batchify(recall_at_k, scores.T, positive.T, chunk, device, k=k) > 0
                                                 ).float().mean().item()
    return metrics, time.perf_counter() - t0


def child(args):
    fn = run_ours if args.child == "ours" else run_reference
    metrics, seconds = fn(args.n, args.dim, args.chunk, args.device)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    if args.device.startswith("cuda"):
        metrics["cuda_peak_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
    print(json.dumps({"metrics": metrics, "seconds": seconds, "peak_rss_gib": peak_gib}))


def measure(tool, n, args):
    cmd = [sys.executable, __file__, "--child", tool, "--n", str(n), "--dim", str(args.dim),
           "--chunk", str(args.chunk if tool == "ours" else 64), "--device", args.device]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def fmt(result: dict, key: str) -> str:
    return f"{result[key]:.2f}" if key in result else result.get("error", "?")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10000, 20000])
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--chunk", type=int, default=256, help="queries per chunk in our evaluator")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-reference-gib", type=float, default=12.0,
                   help="skip CLIP_benchmark where its N×N matrices would need more than this")
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--child", choices=["ours", "reference"], help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    print("| N images = N captions | full score matrix (fp32) | ours: s | ours: peak RSS GiB | "
          "CLIP_benchmark: s | CLIP_benchmark: peak RSS GiB | recall@1/5/10 equal |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for n in args.sizes:
        full_gib = n * n * 4 / 2 ** 30
        ours = measure("ours", n, args)
        need = full_gib * 1.3  # scores + the bool positive matrix
        skip = args.skip_reference or need > args.max_reference_gib
        ref = {"error": "skipped"} if skip else measure("reference", n, args)
        same = "—"
        if "metrics" in ref and "metrics" in ours:
            same = "yes" if all(abs(ours["metrics"][k] - v) < 1e-6 for k, v in ref["metrics"].items()) else "NO"
        print(f"| {n:,} | {full_gib:,.1f} GiB | {fmt(ours, 'seconds')} | {fmt(ours, 'peak_rss_gib')} | "
              f"{fmt(ref, 'seconds')} | {fmt(ref, 'peak_rss_gib')} | {same} |", flush=True)


if __name__ == "__main__":
    main()
