"""One trainer step on a fixed global batch of 32 demo pairs, each process taking its share of the rows.

    python tests/one_step.py DEMO OUT [key=value ...]
    accelerate launch --multi_gpu --num_processes 2 tests/one_step.py DEMO OUT [key=value ...]

Rank 0 writes the gradients the optimizer used, the updated weights and the global gradient norm to OUT.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from safetensors.torch import save_file  # noqa: E402

import mmcontrast as mc  # noqa: E402
from mmcontrast.distributed import shutdown  # noqa: E402
from training.config import load_config  # noqa: E402
from training.train import setup, train_step  # noqa: E402

GLOBAL_BATCH = 32


def main(demo: Path, out: Path, *overrides: str) -> None:
    # a large first step (lr 0.01, no warmup), so any disagreement shows in the weights
    cfg = load_config("training/configs/tiny.yaml", [f"data.train={demo / 'train'}", "data.workers=0",
                                                     "precision=fp32", "optim.grad_clip=0.5", "optim.lr=0.01",
                                                     "schedule.warmup=1", *overrides])
    t = setup(cfg, out, None)
    rank, world = t.accelerator.process_index, t.accelerator.num_processes
    spec = t.loader.spec  # the trainer's transform and tokenizer
    fixed = mc.make_loader(cfg.data.train, spec.transform, spec.tokenizer, GLOBAL_BATCH, shuffle_buffer=0,
                           repeat=False, caption="first")
    batch = next(iter(fixed))
    rows = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    grads, optimizer_step = {}, t.optimizer.step

    def step_keeping_gradients(*args, **kwargs):  # the synchronised, clipped gradients the optimizer uses
        grads.update({n: p.grad.detach().clone() for n, p in t.unwrapped.named_parameters() if p.grad is not None})
        return optimizer_step(*args, **kwargs)

    t.optimizer.step = step_keeping_gradients
    _, grad_norm, stepped, _ = train_step(t, {"image": batch["image"][rows], "text": batch["text"][rows]}, False)
    assert stepped
    if rank == 0:
        save_file({k: v.contiguous() for k, v in t.unwrapped.state_dict().items()}, str(out / "weights.safetensors"))
        save_file(grads, str(out / "grads.safetensors"))
        (out / "step.json").write_text(json.dumps({"world_size": world, "grad_norm": grad_norm.item()}))
    shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), *sys.argv[3:])
