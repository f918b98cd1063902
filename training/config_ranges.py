"""What each numeric training setting allows, checked once the config is read and before anything is built.

``RANGES`` is the table: every int and float key of ``TrainConfig`` has an entry (a test checks none is
missing), and a value outside it is one line naming the key, the value and the range. Values from the user
are quoted through ``shown_value``, whose work and length are bounded whatever the value holds.
"""

from __future__ import annotations

import math
import reprlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mmcontrast.data.negatives import NEGATIVE_SOURCES
from mmcontrast.errors import UserError

if TYPE_CHECKING:
    from .config import TrainConfig

PRECISIONS = ("fp32", "bf16", "fp16")
MAX_SHOWN_VALUE = 100       # characters of a user's value quoted back in a message
MAX_INT = 2**63 - 1         # what torch and numpy hold: a larger count is a typo, and fails deep inside them


@dataclass(frozen=True)
class Range:
    """The values a numeric key allows: ``lo`` and ``hi``, each bound closed or open; floats also finite."""
    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False

    def holds(self, value: float) -> bool:
        above = value > self.lo if self.lo_open else value >= self.lo
        below = value < self.hi if self.hi_open else value <= self.hi
        return (isinstance(value, int) or math.isfinite(value)) and above and below

    def __str__(self) -> str:
        if self.hi == math.inf:
            return f"{'>' if self.lo_open else '≥'} {_number(self.lo)}"
        return f"in {'(' if self.lo_open else '['}{_number(self.lo)}, {_number(self.hi)}{')' if self.hi_open else ']'}"


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


POSITIVE, AT_LEAST_0, AT_LEAST_1 = Range(0, lo_open=True), Range(0), Range(1)
FRACTION = Range(0, 1, hi_open=True)  # a share of something that must keep some of it: 1 would drop all
# Every numeric key and what it allows (a list's items each); tests/test_config_ranges.py checks none is missing.
RANGES: dict[str, Range] = {
    "model.lock_image_unlocked_groups": AT_LEAST_0, "model.lock_text_unlocked_layers": AT_LEAST_0,
    "model.patch_dropout": FRACTION, "model.init_logit_scale": Range(0, 100), "model.init_logit_bias": Range(-100, 100),
    "data.weights": AT_LEAST_0, "data.epoch_samples": AT_LEAST_0, "data.batch_size": AT_LEAST_1,
    "data.workers": AT_LEAST_0, "data.shuffle_buffer": AT_LEAST_0, "data.crop_scale": Range(0, 1, lo_open=True),
    "data.max_bad_fraction": Range(0, 1), "data.max_image_pixels": AT_LEAST_1, "data.max_caption_bytes": AT_LEAST_1,
    "data.max_file_bytes": AT_LEAST_1, "data.max_pax_bytes": AT_LEAST_1,
    "data.negatives_per_sample": AT_LEAST_1,
    "objective.fusion.itm_weight": AT_LEAST_0, "objective.fusion.rerank_weight": AT_LEAST_0,
    "objective.fusion.rerank_negatives": AT_LEAST_1, "objective.fusion.zorro_weight": AT_LEAST_0,
    "objective.fusion.zorro_temperature": POSITIVE,
    "train.chunk_size": AT_LEAST_0,
    "optim.lr": POSITIVE, "optim.weight_decay": AT_LEAST_0, "optim.beta1": FRACTION, "optim.beta2": FRACTION,
    "optim.eps": POSITIVE, "optim.grad_clip": AT_LEAST_0,
    "schedule.steps": AT_LEAST_1, "schedule.warmup": AT_LEAST_0,
    "checkpoint.every": AT_LEAST_0, "checkpoint.keep": AT_LEAST_0,
    "eval.every": AT_LEAST_0, "eval.rerank_k": AT_LEAST_0, "eval.batch_size": AT_LEAST_1,
    "log.every": AT_LEAST_1,
    "seed": Range(0, 2**32 - 1),
}
_SHOWN = reprlib.Repr()  # repr with a bound on depth and items, so a huge value costs no more than a small one
_SHOWN.maxlevel, _SHOWN.maxdict, _SHOWN.maxlist, _SHOWN.maxtuple = 3, 6, 6, 6
_SHOWN.maxstring, _SHOWN.maxother, _SHOWN.maxlong = MAX_SHOWN_VALUE, MAX_SHOWN_VALUE, 40


def shown_value(value) -> str:
    """``repr(value)`` as quoted in a message: bounded work and length, whatever the user gave."""
    text = _SHOWN.repr(value)
    return text if len(text) <= MAX_SHOWN_VALUE else text[:MAX_SHOWN_VALUE] + "…"


def shown_text(text: str) -> str:
    """A message from elsewhere (a parser, a library) as one line, cut: it may quote the user's input."""
    text = " ".join(text[:4 * MAX_SHOWN_VALUE].split())
    return text if len(text) <= 2 * MAX_SHOWN_VALUE else text[:2 * MAX_SHOWN_VALUE] + "…"


def validate(cfg: "TrainConfig") -> None:
    """A known precision, every numeric key within its ``RANGES`` entry and a crop scale pair lo ≤ hi, or a
    UserError naming the key, the value and what is allowed. Cheap: run before anything is built."""
    if cfg.precision not in PRECISIONS:
        raise UserError(f"config key precision must be one of {PRECISIONS}, got {shown_value(cfg.precision)}")
    if cfg.data.negatives not in NEGATIVE_SOURCES:
        raise UserError(f"config key data.negatives must be one of {NEGATIVE_SOURCES} ('': none), "
                        f"got {shown_value(cfg.data.negatives)}")
    for key, allowed in RANGES.items():
        value = cfg
        for part in key.split("."):
            value = getattr(value, part)
        for i, item in enumerate(value) if isinstance(value, list) else [(None, value)]:
            if isinstance(item, int) and abs(item) > MAX_INT:
                raise UserError(f"config key {key} must be an integer below 2**63, got {shown_value(item)}")
            if not allowed.holds(item):
                where = key if i is None else f"{key}[{i}]"
                finite = "a finite number " if isinstance(item, float) else ""
                raise UserError(f"config key {where} must be {finite}{allowed}, got {shown_value(item)}")
    lo_hi = cfg.data.crop_scale
    if len(lo_hi) != 2 or lo_hi[0] > lo_hi[1]:
        raise UserError(f"config key data.crop_scale must be [lo, hi] with lo ≤ hi (fractions of the image area), "
                        f"got {shown_value(lo_hi)}")
