"""The pretraining loop: ``accelerate launch -m training --config ... --output RUN``.

Same code from one CPU process to many GPU nodes: accelerate owns processes, devices, mixed
precision and DDP; the webdataset loader splits shards by rank itself (never ``prepare``d).
"""

from __future__ import annotations

import math
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import broadcast_object_list
from tqdm import tqdm

import mmcontrast as mc
from mmcontrast.data.limits import Limits
from mmcontrast.data.loader import SAMPLE_FAULTS, SHARD_FAULTS, decode_size_for
from mmcontrast.errors import UserError
from mmcontrast.gradcache import grad_cache_step
from mmcontrast.kernels import training_attention
from mmcontrast.locking import lock_towers, set_train_mode
from mmcontrast.model import text_trimmable
from mmcontrast.model_dir import is_model_dir, load_dir_weights, load_weights
from mmcontrast.objectives import FusionTerms, ModelAndObjective, Objective, WithFusion, clamp_logit_scale
from mmcontrast.transforms import Uint8Normalize, make_uint8_train_transform, simclr_view_transform

from .checkpoint import last_complete, load_checkpoint, resume_checkpoint, save_checkpoint
from .config import FusionObjectiveConfig, ModelConfig, TrainConfig, save_config, to_dict, validate
from .config_ranges import shown_text, shown_value
from .evaluate import evaluate
from .log import Logger, Meter, memory_hint
from .optim import make_optimizer, make_scheduler
from .report import write_report
from .run_dir import claim_run_dir

MIXED_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
MAX_BAD_STEPS = 5  # consecutive non-finite losses before the run stops
MIN_SAMPLES_TO_JUDGE = 256  # samples read before the bad-sample fraction can stop a run early; at the end: any


def as_pair(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


class StopFlag:
    """Set by SIGTERM/SIGINT; the loop saves a checkpoint at the end of the step and exits.

    A context manager: the previous handlers come back when training returns.
    """

    def __init__(self):
        self.set = False
        self._previous = {}

    def _handler(self, signum, frame):
        self.set = True

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def make_accelerator(precision: str) -> Accelerator:
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        # Without this, accelerate on CPUs quietly runs DDP instead; on GPUs evaluation, checkpoints and the
        # momentum teacher would see sharded parameters. Refuse rather than train something else.
        raise UserError("FSDP launches are not supported yet; use DDP (training/accelerate/multi_gpu.yaml or "
                        "multi_node.yaml), and train.chunk_size (GradCache) when the batch does not fit")
    # A fresh state, so several runs in one process (tests, notebooks) can choose their precision.
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=MIXED_PRECISION[precision])


def build(cfg: TrainConfig):
    """Model (seeded init), tokenizer, train transform, optimizer, scheduler, objective."""
    try:
        fusion = {"fusion": cfg.model.fusion} if cfg.model.fusion else {}
        model = mc.create_model(cfg.model.name, seed=cfg.seed, patch_dropout=cfg.model.patch_dropout,
                                vision=cfg.model.vision, text=cfg.model.text, **fusion, **logit_init(cfg.model))
    except (ValueError, TypeError, RuntimeError) as e:  # open_clip/timm reject a bad tower setting
        raise UserError(f"model {shown_value(cfg.model.name)} with vision={shown_value(cfg.model.vision)} "
                        f"text={shown_value(cfg.model.text)}: {shown_text(str(e))}") from None
    if cfg.model.pretrained:
        if not Path(cfg.model.pretrained).is_file():
            raise UserError(f"model.pretrained file not found: {cfg.model.pretrained}")
        load_weights(model, cfg.model.pretrained)
    elif is_model_dir(cfg.model.name):  # fine-tuning: start from the directory's weights
        if logit_init(cfg.model):
            raise UserError(f"model.init_logit_scale/init_logit_bias start a new model; {cfg.model.name} is a model "
                            f"directory whose weights hold its own: leave them at 0")
        if cfg.model.vision or cfg.model.text:
            raise UserError(f"model.vision/model.text change the towers of {cfg.model.name}, whose weights "
                            f"would then not fit; set model.pretrained to start from other weights")
        load_dir_weights(model, cfg.model.name)
    if cfg.eval.rerank_k and not hasattr(model, "fusion"):
        raise UserError("eval.rerank_k re-ranks with the ITM head of fusion blocks; set model.fusion, or "
                        "eval.rerank_k=0")
    lock_towers(model, cfg.model.lock_image, cfg.model.lock_image_unlocked_groups, cfg.model.lock_text,
                cfg.model.lock_text_unlocked_layers)
    set_train_mode(model, True)
    if cfg.model.grad_checkpointing:
        model.set_grad_checkpointing(True)
    # uint8 crops, normalised on the device in train_step (Trainer.normalize)
    train_transform, _ = make_uint8_train_transform(model.preprocess_cfg, tuple(cfg.data.crop_scale))
    tokenizer = mc.make_tokenizer(model.model_cfg)
    objective = build_objective(cfg, model)
    optimizer = make_optimizer(model, cfg.optim, objective)
    scheduler = make_scheduler(optimizer, cfg.schedule)
    return model, tokenizer, train_transform, optimizer, scheduler, objective


def logit_init(model_cfg: ModelConfig) -> dict:
    """open_clip's ``init_logit_scale`` (log s₀) and ``init_logit_bias`` from the model keys; 0 leaves the preset's."""
    out = {}
    if model_cfg.init_logit_scale:
        out["init_logit_scale"] = math.log(model_cfg.init_logit_scale)
    if model_cfg.init_logit_bias:
        out["init_logit_bias"] = model_cfg.init_logit_bias
    return out


def build_objective(cfg: TrainConfig, model: torch.nn.Module) -> Objective:
    """The configured objective, wrapped in the fusion-stream terms when the model has fusion blocks, attached
    to the model (teacher copy, SSL head, the model checked)."""
    modes = dict(local_loss=cfg.objective.local_loss, gather_with_grad=cfg.objective.gather_with_grad)
    has_fusion = hasattr(model, "fusion")
    if not has_fusion and cfg.objective.fusion != FusionObjectiveConfig():
        raise UserError("objective.fusion sets terms on the fusion stream, but the model has no fusion blocks; "
                        "set model.fusion (e.g. {depth: 2, width: 128, heads: 4, num_fusion_tokens: 8})")
    try:
        objective = mc.make_objective(cfg.objective.name, **modes, **cfg.objective.options)
        if has_fusion:
            objective = WithFusion(objective, FusionTerms(**to_dict(cfg)["objective"]["fusion"]), **modes)
    except ValueError as e:
        raise UserError(f"objective: {e}") from None
    try:
        objective.attach(model, cfg.schedule.steps)
    except ValueError as e:  # the model does not fit the objective (SigLIP without a logit bias)
        raise UserError(f"objective {cfg.objective.name} with model {shown_value(cfg.model.name)}: {e}") from None
    if cfg.data.ids_from and not objective.uses_sample_ids:
        raise UserError(f"data.ids_from={shown_value(cfg.data.ids_from)} marks captions of one image as positives, "
                        f"but objective {cfg.objective.name} does not read sample ids; set data.ids_from=''")
    if objective.needs_negatives != bool(cfg.data.negatives):
        raise UserError(negatives_mismatch(cfg, objective, has_fusion))
    refusal = objective.grad_cache_refusal()
    if cfg.train.chunk_size and refusal:
        raise UserError(f"train.chunk_size (GradCache) cannot serve {refusal}; set train.chunk_size=0")
    return objective


def negatives_mismatch(cfg: TrainConfig, objective: Objective, has_fusion: bool) -> str:
    """Why data.negatives and the objective's ``needs_negatives`` disagree, naming who reads the captions."""
    pure = objective.pure if isinstance(objective, WithFusion) else objective
    readers = [f"objective {cfg.objective.name}"] * pure.needs_negatives
    readers += ["objective.fusion.negative_captions"] * (pure is not objective and objective.terms.negative_captions)
    if readers:
        return (f"{' and '.join(readers)} train{'s' * (len(readers) == 1)} on hard-negative captions: set "
                f"data.negatives=rules or data.negatives=shards")
    fixes = "objective.name=negclip" + (" or objective.fusion.negative_captions=true" if has_fusion else "")
    return (f"data.negatives={shown_value(cfg.data.negatives)} adds hard-negative captions, but objective "
            f"{cfg.objective.name} does not read them; set data.negatives='' or {fixes}")


@dataclass
class Trainer:
    """Everything a step needs, set up (and restored from a checkpoint) by ``setup``."""
    cfg: TrainConfig
    out: Path
    accelerator: Accelerator
    model: torch.nn.Module        # the ModelAndObjective as prepared (DDP-wrapped with several processes)
    unwrapped: torch.nn.Module    # the model alone: checkpoints, evaluation, the final model directory
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    objective: Objective
    loader: mc.data.Loader
    step: int
    normalize: Uint8Normalize     # the uint8 image batch → the model's normalised float input

    def checkpoint(self) -> None:
        a = self.accelerator
        save_checkpoint(self.out / "checkpoints", self.step, self.unwrapped, self.optimizer, self.scheduler,
                        self.loader.state_dict(), a.process_index, a.num_processes, a.wait_for_everyone,
                        self.cfg.checkpoint.keep, to_dict(self.cfg), self.objective, a.scaler)


def setup(cfg: TrainConfig, out: Path, resume: str | None, accelerator: Accelerator | None = None) -> Trainer:
    accelerator = accelerator or make_accelerator(cfg.precision)
    rank, world = accelerator.process_index, accelerator.num_processes
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    # torch seeds its generator differently in every process: an objective's own parameters (SLIP's head, the
    # Zorro heads), drawn from it, would differ between runs of one config and between ranks
    torch.manual_seed(cfg.seed)
    model, tokenizer, train_transform, optimizer, scheduler, objective = build(cfg)
    step, loader_state = 0, None
    ckpt = choose_checkpoint(resume, out / "checkpoints", accelerator)
    if ckpt is not None:
        step, loader_state = load_checkpoint(ckpt, model, optimizer, scheduler, rank, world, to_dict(cfg),
                                             objective, accelerator.scaler)
        accelerator.print(f"resumed from {ckpt} at step {step}")
    else:
        torch.manual_seed(cfg.seed + rank)  # per-rank randomness in the forward pass (dropout, masks)
    if accelerator.is_main_process:  # after the resume check, which may refuse a changed config
        save_config(cfg, out / "config.yaml")
    # one module, so that DDP averages the gradients of the objective's own parameters with the model's
    prepared, optimizer = accelerator.prepare(ModelAndObjective(model, objective, accelerator.autocast), optimizer)
    if cfg.model.compile:
        prepared = torch.compile(prepared)  # checkpoints and the model directory keep using `model`
    views = simclr_view_transform(model.preprocess_cfg) if objective.needs_views else None
    loader = mc.make_loader(cfg.data.train, train_transform, tokenizer, cfg.data.batch_size, seed=cfg.seed,
                            shuffle_buffer=cfg.data.shuffle_buffer, num_workers=cfg.data.workers, rank=rank,
                            world_size=world, pin_memory=accelerator.device.type == "cuda", state=loader_state,
                            view_transform=views, ids_from=cfg.data.ids_from, resampled=cfg.data.resampled,
                            weights=cfg.data.weights, epoch_samples=cfg.data.epoch_samples,
                            trim_text=text_trimmable(model),
                            decode_size=decode_size_for(max(as_pair(model.preprocess_cfg["size"])),
                                                        min(cfg.data.crop_scale)),
                            limits=Limits(cfg.data.max_image_pixels, cfg.data.max_caption_bytes,
                                          cfg.data.max_file_bytes, cfg.data.max_pax_bytes),
                            negatives=cfg.data.negatives, negatives_per_sample=cfg.data.negatives_per_sample)
    normalize = Uint8Normalize(model.preprocess_cfg["mean"], model.preprocess_cfg["std"])
    return Trainer(cfg, out, accelerator, prepared, model, optimizer, scheduler, objective, loader, step, normalize)


def loss_params(model: torch.nn.Module) -> dict:
    """The objective's inputs that are model parameters: logit scale s = exp(t) and, for SigLIP, the bias."""
    out = {"logit_scale": model.logit_scale.exp()}
    if getattr(model, "logit_bias", None) is not None:
        out["logit_bias"] = model.logit_bias
    return out


def train_step(t: Trainer, batch: dict, stop_requested: bool) -> tuple[dict, torch.Tensor, bool, bool]:
    """Forward, backward, clip, step. Returns (losses, grad norm, stepped, every rank must stop)."""
    device = t.accelerator.device
    batch = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    if batch["image"].dtype == torch.uint8:
        batch["image"] = t.normalize(batch["image"])
    image, text = batch["image"], batch["text"]
    chunk = t.cfg.train.chunk_size
    with training_attention(device, t.cfg.precision):
        if chunk and chunk < image.shape[0]:  # the chunks are encoded through t.model, the objective outside it
            losses = grad_cache_step(t.model, t.objective, batch, chunk, lambda: loss_params(t.unwrapped),
                                     backward=t.accelerator.backward, no_sync=lambda: t.accelerator.no_sync(t.model))
        else:
            losses = t.model(image, text, batch)
            t.accelerator.backward(losses["loss"])
    clip = t.cfg.optim.grad_clip
    grad_norm = t.accelerator.clip_grad_norm_(t.model.parameters(), clip) if clip > 0 else torch.tensor(math.nan)
    # One small all-reduce agrees across ranks on skipping a non-finite step and on stopping.
    flags = torch.tensor([float(not torch.isfinite(losses["loss"])), float(stop_requested)], device=device)
    flags = t.accelerator.reduce(flags, reduction="sum")
    finite = flags[0].item() == 0
    if finite:
        t.optimizer.step()
        t.scheduler.step()
        clamp_logit_scale(t.unwrapped)
        t.objective.after_step(t.unwrapped)  # momentum teacher and queues: once per optimizer step
    t.optimizer.zero_grad(set_to_none=True)
    return losses, grad_norm, finite, flags[1].item() > 0


def train(cfg: TrainConfig, output: str | Path, resume: str | None = None,
          stop_after: int | None = None, overwrite: bool = False) -> dict:
    """Run (or continue) training; returns the final evaluation. ``stop_after`` ends early with a checkpoint;
    ``overwrite`` starts over in a run directory that holds an earlier run (``run_dir.claim_run_dir``)."""
    validate(cfg)  # a config built in Python, not read by load_config, is checked too: before anything is built
    out = Path(output)
    accelerator = make_accelerator(cfg.precision)
    with claim_run_dir(out, resume, overwrite, accelerator.is_main_process, share_from_main):
        return run(setup(cfg, out, resume, accelerator), stop_after)


def share_from_main(value):
    """The main process's ``value`` on every process (a collective)."""
    return broadcast_object_list([value])[0]


def choose_checkpoint(resume: str | None, ckpt_dir: Path, accelerator: Accelerator) -> Path | None:
    """The checkpoint to continue from, verified by the main process alone (it reads every file) and shared
    with all (a collective); when the main process refuses, with its one line, the others stop too."""
    if not resume:
        return None
    found, refusal = None, None
    if accelerator.is_main_process:
        try:
            found = resume_checkpoint(resume, ckpt_dir, log=print)
        except UserError as e:
            refusal = str(e)
    found, refusal = share_from_main((found and str(found), refusal))
    if refusal:
        if accelerator.is_main_process:
            raise UserError(refusal)
        raise SystemExit(2)
    return Path(found) if found else None


def run(t: Trainer, stop_after: int | None) -> dict:
    """The training loop, then the final model directory, evaluation and report."""
    cfg = t.cfg
    main, last = t.accelerator.is_main_process, min(cfg.schedule.steps, stop_after or cfg.schedule.steps)
    log = Logger(t.out / "metrics.jsonl", main)
    meter = Meter(cfg.data.batch_size * t.accelerator.num_processes)
    bar = tqdm(total=cfg.schedule.steps, initial=t.step, disable=not main, desc="train", dynamic_ncols=True)
    bad_steps, batches = 0, iter(t.loader)
    with StopFlag() as stop:
        while t.step < last:
            batch = meter.wait(lambda: next(batches))
            with memory_hint(cfg, t.accelerator.device):
                losses, grad_norm, stepped, must_stop = train_step(t, batch, stop.set)
            if not stepped:
                bad_steps += 1
                log.write({"step": t.step, "skipped_step": "non-finite loss", "loss": losses["loss"].item()})
                if bad_steps >= MAX_BAD_STEPS:
                    raise UserError(f"loss was not finite for {bad_steps} steps in a row at step {t.step}; "
                                    f"{last_complete(t.out / 'checkpoints', t.step)}; lower optim.lr?")
                continue
            bad_steps, t.step = 0, t.step + 1
            bar.update(1)
            if t.step % cfg.log.every == 0 or t.step == last:
                record = log_record(t, meter, losses, grad_norm)  # collective: sums the data faults of all ranks
                log.write(record)
                bar.set_postfix(loss=f"{record['loss']:.3f}", scale=f"{record['logit_scale']:.1f}")
                check_bad_fraction(record, cfg.data.max_bad_fraction, t.out / "checkpoints")
            if (cfg.checkpoint.every and t.step % cfg.checkpoint.every == 0) or t.step == last or must_stop:
                t.checkpoint()
            if must_stop:
                t.accelerator.print(f"stopped by signal at step {t.step}; continue with --resume auto")
                raise SystemExit(1)
            if cfg.eval.every and t.step % cfg.eval.every == 0 and t.step < cfg.schedule.steps:
                meter.pause(lambda: run_eval(cfg, t.unwrapped, t.accelerator, log, t.step))
    bar.close()
    if t.step < cfg.schedule.steps:
        return {}
    faults = data_faults(t)
    check_bad_fraction({"skipped_samples": faults, "samples_read": t.loader.consumed * meter.global_batch},
                       cfg.data.max_bad_fraction, t.out / "checkpoints", at_end=True)  # short runs too
    if main:
        mc.save_model_dir(t.unwrapped, t.out / "final", meta={"step": t.step, "config": to_dict(cfg),
                                                              "skipped_samples": faults})
    result = run_eval(cfg, t.unwrapped, t.accelerator, log, t.step)
    if main:
        print(write_report(t.out, result, faults))
        if faults:
            print(f"skipped while reading the training shards: {faults} (also in metrics.jsonl and report.md)")
    t.accelerator.wait_for_everyone()
    return result


def data_faults(t: Trainer) -> dict[str, int]:
    """What every rank's loader skipped, by reason, summed over ranks (a collective), nonzero counts only."""
    reasons = SAMPLE_FAULTS + SHARD_FAULTS
    own = t.loader.skipped
    counts = torch.tensor([own.get(r, 0) for r in reasons], dtype=torch.float64, device=t.accelerator.device)
    counts = t.accelerator.reduce(counts, reduction="sum").tolist()
    return {r: int(c) for r, c in zip(reasons, counts) if c}


def check_bad_fraction(record: dict, max_fraction: float, checkpoints: Path, at_end: bool = False) -> None:
    """Stop (on every rank alike: the counts are global) when too much of the data read was unusable: during
    the run once ``MIN_SAMPLES_TO_JUDGE`` samples were read, so that a few bad ones first do not stop it;
    ``at_end``, however few were read, before the final model is written."""
    faults = record["skipped_samples"]
    bad = sum(faults.get(r, 0) for r in SAMPLE_FAULTS)
    read = bad + record["samples_read"]
    if read >= (1 if at_end else MIN_SAMPLES_TO_JUDGE) and bad > max_fraction * read:
        when = "at the end of the run (no final model written), " if at_end else ""
        raise UserError(f"{when}{bad} of {read} samples read ({100 * bad / read:.1f}%) were unusable, more than "
                        f"data.max_bad_fraction = {max_fraction:g} ({faults}); `python -m data_prep check DIR` "
                        f"lists what is wrong in a shard directory: repair or rebuild the shards of data.train, "
                        f"or raise the limit; checkpoints so far are kept in {checkpoints}")


def log_record(t: Trainer, meter: Meter, losses: dict, grad_norm: torch.Tensor) -> dict:
    """One line of ``metrics.jsonl`` for the step just taken (a collective: data faults of every rank)."""
    bias = {"logit_bias": t.unwrapped.logit_bias.item()} if "logit_bias" in loss_params(t.unwrapped) else {}
    return {"step": t.step, "world_size": t.accelerator.num_processes, **{k: v.item() for k, v in losses.items()},
            "lr": t.scheduler.get_last_lr()[0], "logit_scale": t.unwrapped.logit_scale.exp().item(),
            "grad_norm": grad_norm.item(), **bias, **meter.rates(),
            "samples_read": t.loader.consumed * meter.global_batch, "skipped_samples": data_faults(t)}


def run_eval(cfg: TrainConfig, model, accelerator: Accelerator, log: Logger, step: int) -> dict:
    """Held-out evaluation; every process encodes its share and all get the same result."""
    was_training = model.training
    model.eval()
    result = evaluate(model, cfg.eval, accelerator.device)
    set_train_mode(model, was_training)
    if result:
        record = {task: r["metrics"] for task, r in result.items()}
        if "reranked" in result.get("retrieval", {}):
            record["retrieval_reranked"] = result["retrieval"]["reranked"]["metrics"]
        log.write({"step": step, "eval": record})
    return result

