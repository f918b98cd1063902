"""The training configuration: one typed dataclass tree, read from YAML, overridden by ``key.sub=value``.

Unknown keys and values of the wrong type are errors that name the key; the resolved config is
written into the run directory, so every run says exactly what it ran.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mmcontrast.data.limits import Limits
from mmcontrast.errors import UserError
from mmcontrast.objectives.fusion_terms import FusionTerms

from .config_keys import closest_keys, describe_keys, shown
from .config_ranges import shown_text, shown_value, validate


@dataclass
class ModelConfig:
    name: str = "tiny"              # a preset (mmcontrast.PRESETS), an open_clip architecture, or a model
                                    # directory to fine-tune (its architecture and weights)
    pretrained: str = ""            # optional local weights file to start from
    lock_image: bool = False        # LiT: freeze the image tower (eval mode, out of the optimizer)
    lock_image_unlocked_groups: int = 0   # ...except its last N layer groups
    lock_text: bool = False         # freeze the text tower
    lock_text_unlocked_layers: int = 0    # ...except its last N layers
    patch_dropout: float = 0.0      # FLIP: fraction of image patches dropped in training, none at eval
    init_logit_scale: float = 0.0   # s₀, the logit scale at the start (not its log); 0: the preset's
                                    # (1/0.07 for CLIP, 10 for SigLIP presets)
    init_logit_bias: float = 0.0    # b₀, SigLIP's logit bias at the start; any other value than 0 gives the
                                    # model a learnable bias (SigLIP from any preset); 0: the preset's
    grad_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% more time
    vision: dict = field(default_factory=dict)  # image tower changes, e.g. {timm_model_name: convnext_atto}
    text: dict = field(default_factory=dict)    # text tower changes, e.g. {hf_model_name: /path/to/encoder}
    compile: bool = False           # torch.compile the model (first steps slower while it compiles)
    fusion: dict = field(default_factory=dict)  # partitioned-attention blocks on top of the towers, e.g.
                                    # {depth: 2, width: 128, heads: 4, num_fusion_tokens: 8} (docs/fusion.md)


@dataclass
class DataConfig:
    train: str = "data/demo/train"  # shard directory with manifest.json, brace pattern, pipe:/http(s) URL;
                                    # several sources joined by "::"
    resampled: bool = False         # draw shards with replacement, in every worker of every rank
    weights: list[float] = field(default_factory=list)  # with resampled: each source's share of the samples
    epoch_samples: int = 0          # with resampled: the virtual epoch in samples (0: the manifests' total)
    batch_size: int = 128           # per process; the global batch is batch_size × processes
    workers: int = 1                # data loader processes per training process
    shuffle_buffer: int = 2000      # samples held and drawn from at random, mixing shards (memory: this many)
    crop_scale: list[float] = field(default_factory=lambda: [0.9, 1.0])  # random resized crop
    ids_from: str = ""              # key.json field whose equal values mark positives (e.g. source: the image
                                    # path data_prep records), so captions of one image are not negatives
    negatives: str = ""             # hard-negative captions for objective negclip and
                                    # objective.fusion.negative_captions: "shards" (key.neg.txt lines,
                                    # key.json "negatives"), "rules" (made from each caption), "" none
    negatives_per_sample: int = 1   # ...at most this many per sample (NegCLIP: 1)
    max_bad_fraction: float = 0.1   # stop when more than this fraction of the samples read was unusable:
                                    # judged at every log line once 256 samples were read, and at the end of
                                    # the run however few (exit status 2, counts by reason; 1: never stop)
    max_image_pixels: int = Limits.max_image_pixels    # width × height from the image header; above: skipped (too_large)
    max_caption_bytes: int = Limits.max_caption_bytes  # a key.txt above this: skipped (caption_too_large)
    max_file_bytes: int = Limits.max_file_bytes        # one file in a shard; above: read past, skipped (file_too_large)
    max_pax_bytes: int = Limits.max_pax_bytes          # one pax header in a shard; above: the shard is corrupt


@dataclass
class FusionObjectiveConfig:
    """With model.fusion: terms on the fusion stream, added to the objective on the pure embeddings."""
    itm_weight: float = FusionTerms.itm_weight      # image–text matching on positives + ALBEF-sampled hard negatives
    rerank_weight: float = FusionTerms.rerank_weight  # listwise loss of the re-ranking score over n hard negatives
                                    # per anchor (LCE)
    rerank_negatives: int = FusionTerms.rerank_negatives  # ...that n
    zorro_weight: float = FusionTerms.zorro_weight  # Zorro-style InfoNCE between the fusion and the pure embeddings
    zorro_stop_grad: bool = FusionTerms.zorro_stop_grad  # ...without moving the pure embeddings
    zorro_temperature: float = FusionTerms.zorro_temperature  # ...its temperature
    negative_captions: bool = FusionTerms.negative_captions  # data.negatives' hard-negative captions as further ITM
                                    # negatives and re-ranking candidates of their own image


@dataclass
class ObjectiveConfig:
    name: str = "clip"              # mmcontrast.OBJECTIVES
    local_loss: bool = True         # b×N logits per rank instead of N×N
    gather_with_grad: bool = True   # gradients flow to the features of every rank
    options: dict = field(default_factory=dict)  # the objective's own settings, e.g. {beta: 0.25} (docs/objectives.md)
    fusion: FusionObjectiveConfig = field(default_factory=FusionObjectiveConfig)


@dataclass
class StepConfig:
    chunk_size: int = 0             # GradCache: encode the batch in chunks of this many samples; exact
                                    # full-batch gradients in one chunk's activation memory (0: off)


@dataclass
class OptimConfig:
    lr: float = 1e-3                # AdamW's peak learning rate, reached after schedule.warmup
    weight_decay: float = 0.1       # on ≥2-D weights only; never on gains, biases or logit_scale
    beta1: float = 0.9              # AdamW's β1
    beta2: float = 0.98             # AdamW's β2 (0.98 as in CLIP: steadier than 0.999 at large batches)
    eps: float = 1e-6               # AdamW's ε
    grad_clip: float = 1.0          # max global grad norm; 0 disables


@dataclass
class ScheduleConfig:
    steps: int = 1000               # optimizer steps in the whole run
    warmup: int = 50                # linear warmup steps, then cosine decay to zero


@dataclass
class CheckpointConfig:
    every: int = 200                # steps between step checkpoints; 0 = only at the end
    keep: int = 2                   # step checkpoints kept (oldest deleted first; 0: all)


@dataclass
class EvalConfig:
    every: int = 0                  # steps between held-out evaluations; 0 = only at the end
    retrieval: str = "data/demo/retrieval"   # CLIP_benchmark webdataset dir; "" to skip
    rerank_k: int = 0               # with model.fusion: also re-rank each query's top K by the ITM head
    zeroshot: str = "data/demo/zeroshot"     # CLIP_benchmark webdataset dir; "" to skip
    compositional: str = ""         # a generated compositional set (python -m data_prep compositional, or the
                                    # demo's OUT/compositional): accuracy per category beside chance; "" to skip
    batch_size: int = 256           # images or captions per forward pass in evaluation


@dataclass
class LogConfig:
    every: int = 10                 # steps between metrics.jsonl lines


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: StepConfig = field(default_factory=StepConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    seed: int = 0                   # initial weights, data order and augmentation
    precision: str = "bf16"         # fp32 | bf16 (autocast; works on CPUs) | fp16 (GPU only)


MAX_CONFIG_BYTES = 1 << 20  # a config file larger than this is refused unread


def _check_value(key: str, tp, value):
    """``value`` converted to type ``tp``, or a UserError naming ``key``."""
    origin = typing.get_origin(tp)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key {key} expects a list, got {shown_value(value)}")
        return [_check_value(f"{key}[{i}]", item_tp, v) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an int of hundreds of digits
                raise UserError(f"config key {key} must be a finite number, got {shown_value(value)}") from None
        if isinstance(value, str):  # PyYAML (YAML 1.1) reads "5e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is dict:
        if isinstance(value, dict):
            return value
    raise UserError(f"config key {key} expects {tp.__name__}, got {shown_value(value)}")


def _build(cls, data: dict, prefix: str = ""):
    if not isinstance(data, dict):
        raise UserError(f"config section {prefix.rstrip('.') or '<root>'} must be a mapping, got {shown_value(data)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise unknown_key(prefix + str(unknown[0]))
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _check_value(prefix + name, tp, value)
    return cls(**kwargs)


def unknown_key(key: str) -> UserError:
    """The error for a key no section has, suggesting the closest real ones across all sections."""
    near = closest_keys(key, TrainConfig)
    hint = f"; did you mean {' or '.join(near)}?" if near else ""
    return UserError(f"unknown config key {shown(key)}{hint} (python -m training --help-config lists every key)")


def help_config() -> str:
    """Every config key with its type, default and meaning (``python -m training --help-config``)."""
    return ("Config keys: set them in the YAML file (section: {key: value}) or as key.sub=value arguments.\n\n"
            + describe_keys(TrainConfig))


def _set_override(tree: dict, cls, key: str, raw: str) -> None:
    parts = key.split(".")
    node, node_cls = tree, cls
    for i, part in enumerate(parts):
        hints = typing.get_type_hints(node_cls)
        if part not in hints:
            raise unknown_key(key)
        tp = hints[part]
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(tp):
                raise UserError(f"config key {key} is a section; set one of its keys, e.g. {key}.<name>=...")
            # Strings stay as typed; everything else is parsed as a YAML scalar or list.
            node[part] = raw if tp is str else _parse_value(key, raw)
        elif tp is dict:  # a free-form mapping: model.vision.timm_model_name=convnext_atto sets one key
            node.setdefault(part, {})[".".join(parts[i + 1:])] = _parse_value(key, raw)
            return
        else:
            if not dataclasses.is_dataclass(tp):
                raise unknown_key(key)
            node = node.setdefault(part, {})
            node_cls = tp


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class _NoAliases(yaml.SafeLoader):
    """YAML without aliases (``*name``): a few hundred bytes of nested aliases expand to billions of nodes
    for whatever walks the result (merging, messages, the saved config)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.MarkedYAMLError(problem="YAML aliases (*name) are not accepted in a config; write the "
                                               "values out, or share settings through base: other.yaml",
                                       problem_mark=mark)
        return super().compose_node(parent, index)


def _yaml(text: str):
    """``text`` parsed (aliases refused); a YAMLError, one line, otherwise."""
    try:
        return yaml.load(text, Loader=_NoAliases)  # noqa: S506 — a SafeLoader
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None


def _yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error as one bounded line: what is wrong and where."""
    if isinstance(e, yaml.MarkedYAMLError) and e.problem:
        where = f" at line {e.problem_mark.line + 1}, column {e.problem_mark.column + 1}" if e.problem_mark else ""
        return shown_text(f"{e.problem}{where}")
    return shown_text(str(e))


def _parse_value(key: str, raw: str):
    try:
        return _yaml(raw)
    except yaml.YAMLError as e:
        raise UserError(f"override {shown(key)}=…: the value is not valid YAML: {_yaml_problem(e)}") from None


def _read_yaml(path: Path, seen: tuple = ()) -> dict:
    """A config file as a dict; ``base: other.yaml`` (relative to the file) is read first and overridden."""
    if not path.is_file():
        raise UserError(f"config file not found: {shown(str(path))}" + (f" (the base of {seen[-1]})" if seen else ""))
    if path.resolve() in seen:
        raise UserError(f"config file {path} is its own base (through {' → '.join(map(str, seen))})")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise UserError(f"config file {path} is {size:,} bytes, more than a config holds ({MAX_CONFIG_BYTES:,})")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"config file {path} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
                        f"save it as UTF-8") from None
    try:
        tree = _yaml(text) or {}
    except yaml.YAMLError as e:
        raise UserError(f"config file {path} is not valid YAML: {_yaml_problem(e)}") from None
    if not isinstance(tree, dict):
        raise UserError(f"config file {path} must hold a mapping of sections, got {type(tree).__name__}")
    base = tree.pop("base", None)
    if base is None:
        return tree
    return _merge(_read_yaml(path.parent / str(base), seen + (path.resolve(),)), tree)


SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs"  # package data: installed with the program


def shipped_configs() -> list[str]:
    """The names of the configs that ship with the package, e.g. ``tiny``, ``objectives/siglip``."""
    return sorted(p.relative_to(SHIPPED_CONFIGS).with_suffix("").as_posix() for p in SHIPPED_CONFIGS.rglob("*.yaml"))


def find_config(path: str | Path) -> Path:
    """``path`` when it exists, else the config of that name shipped with the package, so that after a
    non-editable install ``tiny``, ``objectives/siglip`` or ``training/configs/tiny.yaml`` work from any folder."""
    given = Path(path)
    if given.is_file() or given.is_absolute() or ".." in given.parts:
        return given
    parts = given.parts[1:] if given.parts[:1] == ("training",) else given.parts
    parts = parts[1:] if parts[:1] == ("configs",) else parts
    shipped = SHIPPED_CONFIGS.joinpath(*parts) if parts else SHIPPED_CONFIGS
    if shipped.suffix not in (".yaml", ".yml"):
        shipped = shipped.with_name(shipped.name + ".yaml")
    if shipped.is_file():
        return shipped
    raise UserError(f"config file not found: {given} (tried {given.absolute()} and {shipped}; shipped configs: "
                    f"{', '.join(shipped_configs())})")


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """Read YAML ``path`` (a file, or the name of a shipped config: ``find_config``) or the defaults,
    apply ``key.sub=value`` overrides, validate."""
    tree = _read_yaml(find_config(path)) if path is not None else {}
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {shown_value(item)} must look like key.sub=value")
        key, raw = item.split("=", 1)
        _set_override(tree, TrainConfig, key.strip(), raw)
    cfg = _build(TrainConfig, tree)
    validate(cfg)
    return cfg


def to_dict(cfg: TrainConfig) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: TrainConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
