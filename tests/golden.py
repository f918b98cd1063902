"""Golden values of every objective and of the loader, recorded once and compared bit for bit after a refactor.

    python -m tests.golden --write      # re-record tests/golden/objectives_loader.json

Re-record only when a change is meant to alter numbers, and say so in its commit. Per objective (and the
fusion wrapper around several): the loss parts and every parameter's gradient on a fixed seeded batch, the
optimizer's parameter groups, an optimizer step with the objective's per-step hook, the second step's losses
and gradients (queues and teacher in use), and the objective's checkpoint state. For the loader: the keys,
sample ids, tokens and images of 3 epochs over the demo shards with 2 workers, and of the stream resumed
mid-epoch; likewise a resampled two-source stream.

Float results are compared as SHA-256 of their bytes. Kernels differ between CPU instruction sets and torch
versions, so bit identity is asserted where the file was recorded (``platform`` below); elsewhere the
recorded sums are compared to 1e-4 relative.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "objectives_loader.json"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import mmcontrast as mc  # noqa: E402
from mmcontrast.gradcache import grad_cache_step  # noqa: E402
from training.config import TrainConfig, _build  # noqa: E402
from training.train import build, loss_params  # noqa: E402

FUSION = {"depth": 1, "width": 32, "heads": 2, "num_fusion_tokens": 2}
ALL_FUSION_TERMS = {"itm_weight": 1.0, "rerank_weight": 0.5, "rerank_negatives": 3, "zorro_weight": 0.5}
SMALL_SLIP = {"mlp_dim": 32, "ssl_dim": 16}
CASES = {  # name → (config overrides, batch has sample ids, GradCache chunk)
    "clip": ({"objective": {"name": "clip"}}, False, 0),
    "clip-ids": ({"objective": {"name": "clip"}}, True, 0),
    "clip-global": ({"objective": {"name": "clip", "local_loss": False, "gather_with_grad": True}}, False, 0),
    "clip-gradcache": ({"objective": {"name": "clip"}, "train": {"chunk_size": 3}}, True, 3),
    "siglip": ({"model": {"name": "tiny-siglip"}, "objective": {"name": "siglip"}}, False, 0),
    "siglip-chunked": ({"model": {"name": "tiny-siglip"},
                        "objective": {"name": "siglip", "options": {"chunk_size": 3}}}, True, 0),
    "hn-nce": ({"objective": {"name": "hn-nce"}}, True, 0),
    "hcl": ({"objective": {"name": "hcl"}}, False, 0),
    "debiased": ({"objective": {"name": "debiased"}}, False, 0),
    "dcl": ({"objective": {"name": "dcl"}}, False, 0),
    "dclw": ({"objective": {"name": "dclw"}}, True, 0),
    "momentum": ({"objective": {"name": "momentum",
                                "options": {"queue_size": 12, "alpha_ramp_steps": 3,
                                            "momentum_schedule": "cosine"}}}, True, 0),
    "slip": ({"objective": {"name": "slip", "options": SMALL_SLIP}}, False, 0),
    "fusion-clip": ({"model": {"fusion": FUSION}, "objective": {"name": "clip", "fusion": ALL_FUSION_TERMS}}, True, 0),
    "fusion-momentum": ({"model": {"fusion": FUSION},
                         "objective": {"name": "momentum", "options": {"queue_size": 12}}}, False, 0),
    "fusion-slip": ({"model": {"fusion": FUSION}, "objective": {"name": "slip", "options": SMALL_SLIP,
                                                               "fusion": {"zorro_weight": 1.0}}}, False, 0),
}
BATCH = 8


def platform() -> str:
    """What decides the float rounding: torch, its kernel level, and the processor (an AMD EPYC and an Intel Xeon
    with AMX both report AVX512, yet their bf16 and reduction kernels round differently)."""
    cpu = next((line.split(":", 1)[1].strip() for line in _cpuinfo().splitlines() if line.startswith("model name")),
               "unknown cpu")
    amx = " + AMX" if " amx_bf16" in _cpuinfo() else ""
    return f"torch {torch.__version__}, cpu {torch.backends.cpu.get_cpu_capability()}{amx}, {cpu}"


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _sha(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


def _sum(t: torch.Tensor) -> float | int:
    return float(f"{float(t.detach().double().sum()):.9g}") if t.is_floating_point() else int(t.long().sum())


def _names_sha(names: list[str]) -> str:
    return hashlib.sha256(" ".join(names).encode()).hexdigest()[:24]


def digest(tensors: dict[str, torch.Tensor]) -> dict:
    """One SHA-256 over the tensors' bytes in name order, and each one's sum (what tells which one moved)."""
    names = sorted(tensors)
    return {"sha256": _sha(tensors[n] for n in names), "sums": {n: _sum(tensors[n]) for n in names}}


def fixed_batch(seed: int, tokenizer, model: torch.nn.Module, ids: bool, views: bool) -> dict:
    g = torch.Generator().manual_seed(seed)
    size = model.preprocess_cfg["size"]
    h, w = (size, size) if isinstance(size, int) else size
    words = ["red", "blue", "green", "small", "large", "circle", "square", "star"]
    captions = [" ".join(words[int(i)] for i in torch.randint(len(words), (4,), generator=g)) for _ in range(BATCH)]
    batch = {"image": torch.randn(BATCH, 3, h, w, generator=g), "text": tokenizer(captions)}
    if ids:  # two captions of each of 4 images
        batch["sample_id"] = torch.arange(BATCH) // 2
    if views:
        batch["image_views"] = torch.randn(2, BATCH, 3, h, w, generator=g)
    return batch


def _parameters(model: torch.nn.Module, objective) -> dict[str, torch.nn.Parameter]:
    """The model's parameters, then the objective's own (any it shares with the model listed once)."""
    named = {f"model.{n}": p for n, p in model.named_parameters()}
    seen = {id(p) for p in named.values()}
    if isinstance(objective, torch.nn.Module):
        for n, p in objective.named_parameters():
            if id(p) not in seen:
                named[f"objective.{n}"] = p
                seen.add(id(p))
    return named


def _step(model, objective, batch: dict, chunk: int) -> dict:
    if chunk:
        losses = grad_cache_step(model, objective, batch, chunk, lambda: loss_params(model))
    else:
        losses = objective(**model(batch["image"], batch["text"]), batch=batch, model=model)
        losses["loss"].backward()
    return {k: float(v.detach()).hex() for k, v in losses.items()}


def _grads(params: dict) -> dict:
    return digest({n: p.grad for n, p in params.items() if p.grad is not None})


def objective_record(name: str) -> dict:
    """The golden values of one case, computed in one thread: the fusion blocks' backward (gathers with
    repeated indices) sums in a thread-dependent order, so its gradients differ in the last bits otherwise."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _objective_record(name)
    finally:
        torch.set_num_threads(threads)


def _objective_record(name: str) -> dict:
    overrides, ids, chunk = CASES[name]
    base = {"precision": "fp32", "schedule": {"steps": 10, "warmup": 2}, "data": {"workers": 0}}
    merged = copy.deepcopy(base)
    for k, v in overrides.items():
        merged[k] = {**merged.get(k, {}), **v} if isinstance(v, dict) else v
    cfg = _build(TrainConfig, merged)
    torch.manual_seed(1234)  # heads built by objectives draw from the global generator
    model, tokenizer, _, optimizer, scheduler, objective = build(cfg)
    params = _parameters(model, objective)
    by_id = {id(p): n for n, p in params.items()}
    views = name in ("slip", "fusion-slip")
    record = {"groups": [{"weight_decay": g["weight_decay"], "count": len(g["params"]),
                          "params_sha256": _names_sha([by_id[id(p)] for p in g["params"]])}
                         for g in optimizer.param_groups]}
    torch.manual_seed(99)  # dropout masks and sampled hard negatives
    record["step1"] = _step(model, objective, fixed_batch(1, tokenizer, model, ids, views), chunk)
    record["grads1"] = _grads(params)
    optimizer.step()
    scheduler.step()
    mc.objectives.clamp_logit_scale(model)
    after_step = getattr(objective, "after_step", None)
    if after_step is not None:
        after_step(model)
    optimizer.zero_grad(set_to_none=True)
    record["step2"] = _step(model, objective, fixed_batch(2, tokenizer, model, ids, views), chunk)
    grads2 = _grads(params)  # its SHA-256 and total: the per-parameter sums of step 1 suffice to tell which moved
    record["grads2"] = {"sha256": grads2["sha256"], "sums": {"total": float(f"{sum(grads2['sums'].values()):.9g}")}}
    state = objective.state_dict() if isinstance(objective, torch.nn.Module) else {}
    record["objective_state"] = digest(state)
    return record


# ---------------------------------------------------------------- the loader

def _loader_pieces():
    model = mc.create_model("tiny", seed=0)
    from mmcontrast.transforms import make_uint8_train_transform
    transform, _ = make_uint8_train_transform(model.preprocess_cfg, (0.9, 1.0))
    return transform, mc.make_tokenizer(model.model_cfg)


def _batch_record(batch: dict) -> dict:
    """The batch's keys (first, last, SHA-256 of all), and digests of its sample ids, tokens and images."""
    keys = batch["key"]
    return {"keys": [keys[0], keys[-1], _names_sha(keys)],
            "tensors": digest({k: batch[k] for k in ("sample_id", "text", "image") if k in batch})}


def _stream(urls, n: int, resume_at: int, **kwargs) -> dict:
    transform, tokenizer = _loader_pieces()
    loader = mc.make_loader(urls, transform, tokenizer, 64, num_workers=2, seed=3, shuffle_buffer=256,
                            ids_from="source", **kwargs)
    batches, state = [], None
    for batch in loader:
        batches.append(_batch_record(batch))
        if len(batches) == resume_at:
            state = copy.deepcopy(loader.state_dict())
        if len(batches) == n:
            break
    resumed = mc.make_loader(urls, transform, tokenizer, 64, num_workers=2, seed=3, shuffle_buffer=256,
                             ids_from="source", state=state, **kwargs)
    after = []
    for batch in resumed:
        after.append(_batch_record(batch))
        if len(after) == n - resume_at:
            break
    return {"batches": batches, "resume_state": state, "resumed": after}


def loader_record(demo: Path) -> dict:
    train = demo / "train"
    shards = sorted(str(p) for p in train.glob("*.tar"))
    return {"three_epochs": _stream(str(train), 96, 40),  # 32 batches per epoch: resumed in the second
            "resampled": _stream(f"{shards[0]}::{shards[1]}", 20, 7, resampled=True, weights=[3.0, 1.0],
                                 epoch_samples=512)}


def build_small_demo(out: Path) -> Path:
    """The test suite's ``small_demo`` fixture data."""
    from data_prep.demo import build_demo
    build_demo(out, seed=1, train_size=2048, retrieval_size=120, zeroshot_size=160, shard_size=256, workers=1)
    return out


def record_all(demo: Path) -> dict:
    return {"platform": platform(), "objectives": {name: objective_record(name) for name in CASES},
            "loader": loader_record(demo)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help=f"record {GOLDEN.relative_to(ROOT)}")
    args = parser.parse_args()
    if not args.write:
        parser.error("nothing to do: --write records the golden file")
    with tempfile.TemporaryDirectory() as tmp:
        values = record_all(build_small_demo(Path(tmp)))
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(values, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN} ({platform()})")


if __name__ == "__main__":
    main()
