"""What the fusion blocks cost: parameters, FLOPs and time of one training step, `tiny` vs `tiny_fusion`.

    .venv/bin/python benchmarks/fusion_cost.py [--batch 128] [--steps 20] [--precision bf16]

Both models are built by the trainer's own `build` from the two demo configs and trained on the same
synthetic batch (images, captions of 15 tokens as on the demo); steps alternate between the two
models so that both see the same machine state. FLOPs are counted by torch's FlopCounterMode over one
forward + backward (objective included: the ITM negatives' fusion rows too). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from mmcontrast.kernels import training_attention
from training.config import load_config
from training.train import build, loss_params  # noqa: F401  (loss_params: same objective inputs as the trainer)

CONFIGS = {"tiny": "training/configs/tiny.yaml", "tiny_fusion": "training/configs/tiny_fusion.yaml"}


def make(name: str, precision: str):
    cfg = load_config(CONFIGS[name], [f"precision={precision}"])
    model, tokenizer, _, optimizer, _, objective = build(cfg)
    return model, tokenizer, optimizer, objective


def step(model, objective, optimizer, image, text, precision: str) -> None:
    dtype = {"bf16": torch.bfloat16, "fp32": None}[precision]
    with training_attention(torch.device("cpu"), precision):
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            out = model(image, text)
            losses = objective(**out, batch={"image": image, "text": text}, model=model)
        losses["loss"].backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    args = p.parse_args()
    torch.manual_seed(0)
    built = {name: make(name, args.precision) for name in CONFIGS}
    tokenizer = built["tiny"][1]
    image = torch.randn(args.batch, 3, 64, 64)
    captions = [f"{n} large purple rings on the right of a striped background" for n in range(args.batch)]
    text = tokenizer(captions)[:, :16]  # the loader trims rows after the longest caption, to a multiple of 8
    rows = {}
    for name, (model, _, optimizer, objective) in built.items():
        params = sum(p.numel() for p in model.parameters())
        blocks = sum(p.numel() for p in model.fusion.parameters()) if hasattr(model, "fusion") else 0
        with FlopCounterMode(display=False) as counter:
            step(model, objective, optimizer, image, text, args.precision)
        rows[name] = {"params": params, "blocks": blocks, "flops": counter.get_total_flops(), "times": []}
    for _ in range(3):  # warm-up
        for name, (model, _, optimizer, objective) in built.items():
            step(model, objective, optimizer, image, text, args.precision)
    for _ in range(args.steps):
        for name, (model, _, optimizer, objective) in built.items():
            t0 = time.perf_counter()
            step(model, objective, optimizer, image, text, args.precision)
            rows[name]["times"].append(time.perf_counter() - t0)
    base = rows["tiny"]
    print(f"batch {args.batch}, {args.precision}, {torch.get_num_threads()} threads, median of {args.steps} steps\n")
    print("| model | parameters | of which fusion blocks + ITM head | GFLOPs per step (fwd + bwd) | ms per step "
          "| × tiny |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        ms = 1000 * statistics.median(r["times"])
        ratio = ms / (1000 * statistics.median(base["times"]))
        print(f"| {name} | {r['params'] / 1e6:.2f} M | {r['blocks'] / 1e6:.2f} M | {r['flops'] / 1e9:.1f} | "
              f"{ms:.0f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
