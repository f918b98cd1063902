"""The pretraining loop: ``accelerate launch -m training --config ... --output RUN``.

Same code from one CPU process to many GPU nodes: accelerate owns processes, devices, mixed
precision and DDP; the webdataset loader splits shards by rank itself (never ``prepare``d).
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from open_clip.factory import load_checkpoint as load_open_clip_weights
from tqdm import tqdm

import mmcontrast as mc
from mmcontrast.errors import UserError
from mmcontrast.objectives import clamp_logit_scale

from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig, save_config, to_dict
from .evaluate import evaluate
from .optim import make_optimizer, make_scheduler
from .report import write_report

MIXED_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
MAX_BAD_STEPS = 5  # consecutive non-finite losses before the run stops


class StopFlag:
    """Set by SIGTERM/SIGINT; the loop saves a checkpoint at the end of the step and exits."""

    def __init__(self):
        self.set = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handler)

    def _handler(self, signum, frame):
        self.set = True


def make_accelerator(precision: str) -> Accelerator:
    # A fresh state, so several runs in one process (tests, notebooks) can choose their precision.
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=MIXED_PRECISION[precision])


def build(cfg: TrainConfig):
    """Model (seeded init), tokenizer, train transform, optimizer, scheduler, objective."""
    model = mc.create_model(cfg.model.name, seed=cfg.seed)
    if cfg.model.pretrained:
        if not Path(cfg.model.pretrained).is_file():
            raise UserError(f"model.pretrained file not found: {cfg.model.pretrained}")
        load_open_clip_weights(model, cfg.model.pretrained, strict=True, weights_only=True)
    train_transform, _ = mc.make_transforms(model.preprocess_cfg, {"scale": tuple(cfg.data.crop_scale)})
    tokenizer = mc.make_tokenizer(model.model_cfg)
    optimizer = make_optimizer(model, cfg.optim)
    scheduler = make_scheduler(optimizer, cfg.schedule)
    objective = mc.make_objective(cfg.objective.name, local_loss=cfg.objective.local_loss,
                                  gather_with_grad=cfg.objective.gather_with_grad)
    return model, tokenizer, train_transform, optimizer, scheduler, objective


def train(cfg: TrainConfig, output: str | Path, resume: str | None = None,
          stop_after: int | None = None) -> dict:
    """Run (or continue) training; returns the final evaluation. ``stop_after`` ends early with a checkpoint."""
    out = Path(output)
    accelerator = make_accelerator(cfg.precision)
    rank, world, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    if main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    model, tokenizer, train_transform, optimizer, scheduler, objective = build(cfg)
    step, loader_state = 0, None
    if resume:
        ckpt = latest_checkpoint(out / "checkpoints") if resume == "auto" else Path(resume)
        if ckpt is not None:
            if not (ckpt / "state.json").is_file():
                raise UserError(f"not a complete checkpoint: {ckpt}")
            step, loader_state = load_checkpoint(ckpt, model, optimizer, scheduler, rank, world)
            accelerator.print(f"resumed from {ckpt} at step {step}")
    else:
        torch.manual_seed(cfg.seed + rank)  # per-rank randomness in the forward pass (dropout, masks)
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    loader = mc.make_loader(cfg.data.train, train_transform, tokenizer, cfg.data.batch_size, seed=cfg.seed,
                            shuffle_buffer=cfg.data.shuffle_buffer, num_workers=cfg.data.workers, rank=rank,
                            world_size=world, pin_memory=accelerator.device.type == "cuda", state=loader_state)
    global_batch = cfg.data.batch_size * world
    stop, last = StopFlag(), min(cfg.schedule.steps, stop_after or cfg.schedule.steps)
    log = Logger(out / "metrics.jsonl", main)
    bar = tqdm(total=cfg.schedule.steps, initial=step, disable=not main, desc="train", dynamic_ncols=True)

    def checkpoint():
        save_checkpoint(out / "checkpoints", step, unwrapped, optimizer, scheduler, loader.state_dict(),
                        rank, world, accelerator.wait_for_everyone, cfg.checkpoint.keep)

    bad_steps, t_wait, t_last = 0, 0.0, time.perf_counter()
    batches = iter(loader)
    while step < last:
        # --- data
        t0 = time.perf_counter()
        batch = next(batches)
        image = batch["image"].to(accelerator.device, non_blocking=True)
        text = batch["text"].to(accelerator.device, non_blocking=True)
        t_wait += time.perf_counter() - t0
        # --- forward, backward, step
        with accelerator.autocast():
            outputs = model(image, text)
        losses = objective(**outputs, batch=batch)
        accelerator.backward(losses["loss"])
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip) \
            if cfg.optim.grad_clip > 0 else torch.tensor(float("nan"))
        # One small all-reduce agrees across ranks on skipping a non-finite step and on stopping.
        flags = torch.tensor([float(not torch.isfinite(losses["loss"])), float(stop.set)], device=accelerator.device)
        flags = accelerator.reduce(flags, reduction="sum")
        if flags[0] > 0:
            optimizer.zero_grad(set_to_none=True)
            bad_steps += 1
            log.write({"step": step, "skipped_step": "non-finite loss", "loss": losses["loss"].item()})
            if bad_steps >= MAX_BAD_STEPS:
                raise UserError(f"loss was not finite for {bad_steps} steps in a row at step {step}; "
                                f"last good checkpoint kept in {out / 'checkpoints'}; lower optim.lr?")
            continue
        bad_steps = 0
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        clamp_logit_scale(unwrapped)
        step += 1
        bar.update(1)
        # --- bookkeeping
        if step % cfg.log.every == 0 or step == last:
            now = time.perf_counter()
            n = step % cfg.log.every or cfg.log.every
            record = {"step": step, "world_size": world, **{k: v.item() for k, v in losses.items()},
                      "lr": scheduler.get_last_lr()[0], "logit_scale": unwrapped.logit_scale.exp().item(),
                      "grad_norm": grad_norm.item(), "samples_per_s": n * global_batch / (now - t_last),
                      "data_wait": t_wait / (now - t_last), "skipped_samples": loader.skipped}
            log.write(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", scale=f"{record['logit_scale']:.1f}")
            t_wait, t_last = 0.0, now
        if (cfg.checkpoint.every and step % cfg.checkpoint.every == 0) or step == last or flags[1] > 0:
            checkpoint()
        if flags[1] > 0:
            accelerator.print(f"stopped by signal at step {step}; resume with --resume auto")
            raise SystemExit(1)
        if cfg.eval.every and step % cfg.eval.every == 0 and step < cfg.schedule.steps:
            run_eval(cfg, unwrapped, accelerator, log, step)
            t_last = time.perf_counter()
    bar.close()
    if step < cfg.schedule.steps:
        return {}
    if main:
        mc.save_model_dir(unwrapped, out / "final", meta={"step": step, "config": to_dict(cfg),
                                                          "skipped_samples": loader.skipped})
    result = run_eval(cfg, unwrapped, accelerator, log, step)
    if main:
        print(write_report(out, result))
    accelerator.wait_for_everyone()
    return result


def run_eval(cfg: TrainConfig, model, accelerator: Accelerator, log: "Logger", step: int) -> dict:
    """Held-out evaluation on the main process; the others wait."""
    result = {}
    if accelerator.is_main_process:
        was_training = model.training
        model.eval()
        result = evaluate(model, cfg.eval, accelerator.device)
        model.train(was_training)
        log.write({"step": step, "eval": {task: r["metrics"] for task, r in result.items()}})
    accelerator.wait_for_everyone()
    return result


class Logger:
    """``metrics.jsonl``: one JSON object per line, appended (a resumed run continues the file)."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
