"""Linear probe and few-shot probe on frozen image features: CLIP_benchmark's training, without its leak.

The protocol of CLIP_benchmark's ``clip_benchmark/metrics/linear_probe.py`` (1.6.2), on [N, D] feature tensors:
a ``torch.nn.Linear(D, C)`` with bias, trained with cross-entropy by AdamW under a cosine learning rate without
warm-up (lr 0.1, 10 epochs, batches of 64, seed 0). The weight decay is chosen by validation acc1 from
``logspace(-6, 2, 97)``: the 7 points 0, 16, …, 96, then the best one and its neighbours at spans 8, 4, 2, 1
(ties keep the earlier point); with no validation set it is 0. The CLIP paper (Radford et al. 2021, App. A.3)
sweeps the same way with scikit-learn's L-BFGS; CLIP_benchmark, and this module, use AdamW.

The classifier's initial weights and each epoch's shuffle are drawn in the order CLIP_benchmark draws them (its
``torch.manual_seed(seed)``, ``nn.Linear`` and a shuffling ``DataLoader``), but from a generator of our own, so
the global RNG is untouched and the same rows in the same order give the same weights as theirs. It runs in
fp32 on any device; theirs asserts CUDA and autocasts.

Where this module differs, on purpose:

- CLIP_benchmark issue #125. Test rows are used once, after the final fit. With ``fewshot_k >= 0`` the final
  classifier is fit on the k-shot train rows only. The search's validation rows are k per class as well, drawn
  from the train split disjointly from the k-shot rows (or from a given validation split); they count as labels
  the probe used (``n_val``) but never reach the final fit. With ``fewshot_k < 0`` the final fit is on
  train + validation, as CLIP_benchmark and the CLIP paper do it; no test row reaches it.
- CLIP_benchmark scores the search on the whole validation set even in few-shot mode; here that set is k per class.
- A class with fewer than k train rows is a one-line error naming the class (CLIP_benchmark prints "insufficient
  data" and returns None). A class with no train row is an error in every mode (CLIP_benchmark sizes the
  classifier by the largest train label and never notices).
- ``val_proportion`` holds out a seeded share of train; CLIP_benchmark's ``random_split`` draws from the global RNG.
- When every point of a search scores 0 on validation, the first point is kept; CLIP_benchmark keeps index 0.
- ``lp_acc5`` is NaN below 6 classes, where a top-5 guess over 5 classes is always right; CLIP_benchmark's
  rule is "the largest test label is at least 5", the same whenever the test split holds its last class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from mmcontrast.errors import UserError
from mmcontrast.metrics import accuracy, mean_per_class_recall

WD_GRID = tuple(np.logspace(-6, 2, num=97).tolist())   # CLIP_benchmark's grid: 12 points per decade
COARSE_STEP = 16                                       # its first pass: indices 0, 16, ..., 96
SCORES = ("lp_acc1", "lp_acc5", "lp_mean_per_class_recall")


@dataclass(frozen=True)
class ProbeConfig:
    lr: float = 0.1                          # CLIP_benchmark --fewshot_lr
    epochs: int = 10                         # --fewshot_epochs
    batch_size: int = 64                     # --batch_size
    fewshot_k: int = -1                      # train rows per class; -1: every train row
    val_proportion: float = 0.0              # share of train held out for the search when no validation split is
                                             # given; with fewshot_k >= 0 any p > 0 asks for k rows per class
    wd_grid: tuple[float, ...] = WD_GRID     # weight decays searched
    coarse_step: int = COARSE_STEP           # first pass every coarse_step-th point; then spans step/2, /4, ..., 1

    def __post_init__(self):
        checks = [(self.lr > 0, f"lr must be positive, got {self.lr}"),
                  (self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
                  (self.batch_size >= 1, f"batch size must be at least 1, got {self.batch_size}"),
                  (self.fewshot_k == -1 or self.fewshot_k >= 1,
                   f"fewshot k must be -1 (every train example) or a positive number per class, got {self.fewshot_k}"),
                  (0 <= self.val_proportion < 1, f"validation proportion must be in [0, 1), got {self.val_proportion}"),
                  (len(self.wd_grid) >= 1 and self.coarse_step >= 1 and (len(self.wd_grid) - 1) % self.coarse_step == 0,
                   f"a weight-decay grid of {len(self.wd_grid)} points cannot be searched every {self.coarse_step}")]
        for ok, message in checks:
            if not ok:
                raise UserError(f"linear probe: {message}")

    @property
    def spans(self) -> list[int]:
        """The refinement spans around the peak: coarse_step halved down to 1 (8, 4, 2, 1 for CLIP_benchmark)."""
        spans, span = [], self.coarse_step // 2
        while span > 0:
            spans.append(span)
            span //= 2
        return spans


@dataclass
class ProbeResult:
    metrics: dict                          # CLIP_benchmark's names, plus n_train (rows of the final fit) and
                                           # n_val (validation rows only the search saw)
    classifier: torch.nn.Linear            # the final classifier, on the CPU
    weight_decay: float
    search: list[tuple[int, float]]        # (grid index, validation acc1) of every fit of the search, in order
    fit_rows: torch.Tensor                 # rows of the train split the final classifier was fit on
    val_rows: torch.Tensor                 # rows the search scored, of the split named by val_from
    val_from: str                          # "train", "val" (the given validation split) or "" (no search)
    fit_val_rows: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    # rows of the given validation split the final fit saw too (fewshot_k < 0 only)


def _draw_seed(generator: torch.Generator) -> int:
    return int(torch.empty((), dtype=torch.int64).random_(generator=generator).item())


def train_linear(features: torch.Tensor, labels: torch.Tensor, num_classes: int, weight_decay: float,
                 config: ProbeConfig, seed: int) -> torch.nn.Linear:
    """A ``Linear(D, C)`` fit on ``features`` [N, D] as CLIP_benchmark's ``train`` fits it, on their device."""
    g = torch.Generator().manual_seed(seed)
    dim = features.shape[1]
    classifier = torch.nn.Linear(dim, num_classes, device="meta").to_empty(device="cpu")
    with torch.no_grad():  # nn.Linear.reset_parameters, drawn from g rather than the global RNG
        torch.nn.init.kaiming_uniform_(classifier.weight, a=math.sqrt(5), generator=g)
        torch.nn.init.uniform_(classifier.bias, -1 / math.sqrt(dim), 1 / math.sqrt(dim), generator=g)
    classifier = classifier.to(features.device)
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=config.lr, weight_decay=weight_decay)
    n = len(features)
    per_epoch = math.ceil(n / config.batch_size)
    steps = config.epochs * per_epoch
    for epoch in range(config.epochs):
        # a shuffling DataLoader draws its workers' base seed, then its sampler's seed for the permutation
        _draw_seed(g)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(_draw_seed(g))).to(features.device)
        for i in range(per_epoch):
            step = i + epoch * per_epoch
            for group in optimizer.param_groups:  # cosine without warm-up, as CLIP_benchmark's cosine_lr
                group["lr"] = 0.5 * (1 + np.cos(np.pi * step / steps)) * config.lr
            rows = order[i * config.batch_size:(i + 1) * config.batch_size]
            optimizer.zero_grad()
            loss = F.cross_entropy(classifier(features[rows]), labels[rows])
            loss.backward()
            optimizer.step()
    return classifier


@torch.no_grad()
def predict(classifier: torch.nn.Linear, features: torch.Tensor, batch_size: int) -> torch.Tensor:
    """[N, C] logits on the CPU, computed in batches (as CLIP_benchmark's ``infer``)."""
    return torch.cat([classifier(features[i:i + batch_size]).cpu() for i in range(0, len(features), batch_size)])


def search_weight_decay(train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
                        num_classes: int, config: ProbeConfig, seed: int) -> tuple[int, list[tuple[int, float]]]:
    """(grid index of the chosen weight decay, the (index, validation acc1) of every fit), as CLIP_benchmark's
    coarse pass and refinement; ties keep the point fit first."""
    log: list[tuple[int, float]] = []

    def best(indices: list[int]) -> int:
        scores = []
        for idx in indices:
            classifier = train_linear(*train, num_classes, config.wd_grid[idx], config, seed)
            scores.append(accuracy(predict(classifier, val[0], config.batch_size), val[1].cpu(), 1))
            log.append((idx, scores[-1]))
        return indices[scores.index(max(scores))]

    last = len(config.wd_grid) - 1
    peak = best(list(range(0, last + 1, config.coarse_step)))
    for span in config.spans:
        peak = best([max(peak - span, 0), peak, min(peak + span, last)])
    return peak, log


def take_per_class(order: torch.Tensor, labels: torch.Tensor, k: int, num_classes: int) -> torch.Tensor:
    """The rows of ``order`` that are among the first ``k`` of their class in it, in ``order``'s order."""
    seen = torch.zeros(num_classes, dtype=torch.long)
    keep = []
    for row in order.tolist():
        c = int(labels[row])
        if seen[c] < k:
            seen[c] += 1
            keep.append(row)
    return torch.tensor(keep, dtype=torch.long)


def _check_counts(labels: torch.Tensor, need: int, num_classes: int, classnames: list[str] | None,
                  split: str, why: str) -> None:
    counts = torch.bincount(labels, minlength=num_classes)
    short = [c for c in range(num_classes) if counts[c] < need]
    if short:
        c = short[0]
        name = f"class {c}" + (f" ({classnames[c]!r})" if classnames else "")
        raise UserError(f"linear probe: {name} has {int(counts[c])} {split} example(s); {why} needs {need} per class "
                        f"({len(short)} of {num_classes} classes have fewer)")


def _check_split(features: torch.Tensor, labels: torch.Tensor, num_classes: int, dim: int, split: str) -> None:
    if features.ndim != 2 or features.shape[1] != dim or labels.shape != (len(features),):
        raise UserError(f"linear probe: the {split} split has features {tuple(features.shape)} and labels "
                        f"{tuple(labels.shape)}; expected [N, {dim}] and [N]")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise UserError(f"linear probe: the {split} split has label {int(labels.max())}, not a class index "
                        f"0-{num_classes - 1}")


def _unit_norm(*features: torch.Tensor) -> bool:
    return all(torch.allclose(f.norm(dim=1), torch.ones(len(f), device=f.device), atol=1e-3) for f in features)


def _rows(train_labels: torch.Tensor, val_labels: torch.Tensor | None, num_classes: int,
          classnames: list[str] | None, config: ProbeConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(rows of train the search fits on, rows the search scores, "train"/"val"/""): a seeded permutation of train,
    then k per class from it (and the next k for validation) or a held-out share."""
    k, g = config.fewshot_k, torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train_labels), generator=g)
    wants_val = val_labels is not None or config.val_proportion > 0
    val_from = "" if not wants_val else "val" if val_labels is not None else "train"
    empty = torch.zeros(0, dtype=torch.long)
    if k < 0:
        _check_counts(train_labels, 1, num_classes, classnames, "train", "a linear probe")
        if val_from != "train":
            return order, (torch.arange(len(val_labels)) if val_from else empty), val_from
        n_val = int(len(order) * config.val_proportion)
        if not 1 <= n_val < len(order):
            raise UserError(f"linear probe: a validation proportion of {config.val_proportion} of {len(order)} train "
                            f"examples leaves {n_val} for validation and {len(order) - n_val} for training")
        return order[:-n_val], order[-n_val:], val_from
    budget = 2 * k if val_from == "train" else k
    _check_counts(train_labels, budget, num_classes, classnames, "train",
                  f"--fewshot-k {k}" + (" with its validation drawn from train" if val_from == "train" else ""))
    train_rows = take_per_class(order, train_labels, k, num_classes)
    if val_from == "train":  # the next k of each class in the same permutation: disjoint from train_rows
        rest = order[~torch.isin(order, train_rows)]
        return train_rows, take_per_class(rest, train_labels, k, num_classes), val_from
    if val_from == "val":
        _check_counts(val_labels, k, num_classes, classnames, "validation", f"--fewshot-k {k}")
        val_order = torch.randperm(len(val_labels), generator=g)
        return train_rows, take_per_class(val_order, val_labels, k, num_classes), val_from
    return train_rows, empty, val_from


def probe_scores(logits: torch.Tensor, target: torch.Tensor, num_classes: int) -> dict[str, float]:
    """``lp_acc1``, ``lp_acc5`` (NaN below 6 classes) and ``lp_mean_per_class_recall`` (balanced accuracy)."""
    return {"lp_acc1": accuracy(logits, target, 1),
            "lp_acc5": accuracy(logits, target, 5) if num_classes > 5 else math.nan,
            "lp_mean_per_class_recall": mean_per_class_recall(logits.argmax(dim=1), target)}


def fit_probe(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
              test_labels: torch.Tensor, val_features: torch.Tensor | None = None,
              val_labels: torch.Tensor | None = None, *, num_classes: int | None = None,
              classnames: list[str] | None = None, config: ProbeConfig = ProbeConfig(), seed: int = 0,
              device: str | torch.device = "cpu") -> ProbeResult:
    """One seed of the probe: rows drawn, weight decay searched on validation, final fit, one pass over test.

    ``num_classes`` defaults to the largest label + 1; ``classnames`` only names classes in errors. A validation
    split (``val_features``/``val_labels``) and ``config.val_proportion`` exclude each other."""
    if (val_features is None) != (val_labels is None):
        raise UserError("linear probe: give both the validation features and their labels, or neither")
    if val_features is not None and config.val_proportion > 0:
        raise UserError("linear probe: a validation split and a validation proportion exclude each other; give one")
    splits = {"train": (train_features, train_labels), "test": (test_features, test_labels)}
    if val_features is not None:
        splits["validation"] = (val_features, val_labels)
    splits = {name: (f.float(), y.long().cpu()) for name, (f, y) in splits.items()}
    if num_classes is None:
        num_classes = 1 + max(int(y.max()) for _, y in splits.values() if len(y))
    dim = splits["train"][0].shape[-1]
    for name, (f, y) in splits.items():
        _check_split(f, y, num_classes, dim, name)
    (x_train, y_train), (x_test, y_test) = splits["train"], splits["test"]
    x_val, y_val = splits.get("validation", (None, None))
    search_rows, val_rows, val_from = _rows(y_train, y_val, num_classes, classnames, config, seed)

    device = torch.device(device)
    on = {name: (f.to(device), y.to(device)) for name, (f, y) in splits.items()}
    wd, search, fit_val_rows = 0.0, [], torch.zeros(0, dtype=torch.long)
    fit_x, fit_y = on["train"][0][search_rows], on["train"][1][search_rows]
    if val_from:
        source = on["train"] if val_from == "train" else on["validation"]
        val = (source[0][val_rows], source[1][val_rows])
        peak, search = search_weight_decay((fit_x, fit_y), val, num_classes, config, seed)
        wd = config.wd_grid[peak]
        if config.fewshot_k < 0:  # the full probe refits on train + validation (CLIP_benchmark, CLIP App. A.3)
            fit_x, fit_y = torch.cat([fit_x, val[0]]), torch.cat([fit_y, val[1]])
            fit_val_rows = val_rows if val_from == "val" else fit_val_rows
    fit_rows = search_rows if config.fewshot_k >= 0 or val_from != "train" else torch.cat([search_rows, val_rows])
    classifier = train_linear(fit_x, fit_y, num_classes, wd, config, seed)
    metrics = {**probe_scores(predict(classifier, on["test"][0], config.batch_size), y_test, num_classes),
               "weight_decay": wd, "epochs": config.epochs, "seed": seed, "fewshot_k": config.fewshot_k,
               "normalized": _unit_norm(x_train, x_test, *([x_val] if x_val is not None else [])),
               "n_train": len(fit_y) if config.fewshot_k < 0 else len(search_rows),
               "n_val": 0 if config.fewshot_k < 0 else len(val_rows)}
    return ProbeResult(metrics, classifier.cpu(), wd, search, fit_rows, val_rows, val_from, fit_val_rows)


def summarise(per_seed: list[dict]) -> dict:
    """One seed's metrics as they are; several: the mean of each score with its sample standard deviation
    (``<name>_std``), the per-seed weight decays and seeds as lists, and every seed's metrics under ``per_seed``."""
    if len(per_seed) == 1:
        return dict(per_seed[0])
    out = {}
    for name in SCORES:
        values = np.array([m[name] for m in per_seed])  # NaN (lp_acc5 below 6 classes) stays NaN
        out[name], out[f"{name}_std"] = float(values.mean()), float(values.std(ddof=1))
    first = per_seed[0]
    out.update({"weight_decay": [m["weight_decay"] for m in per_seed], "epochs": first["epochs"],
                "seed": [m["seed"] for m in per_seed], "fewshot_k": first["fewshot_k"],
                "normalized": all(m["normalized"] for m in per_seed), "n_train": first["n_train"],
                "n_val": first["n_val"], "per_seed": per_seed})
    return out


def linear_probe(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, val_features: torch.Tensor | None = None,
                 val_labels: torch.Tensor | None = None, *, seeds: tuple[int, ...] = (0,), **options) -> dict:
    """The probe's metrics in CLIP_benchmark's names, over ``seeds`` (mean ± std for several); ``options`` are
    ``fit_probe``'s."""
    return summarise([fit_probe(train_features, train_labels, test_features, test_labels, val_features, val_labels,
                                seed=seed, **options).metrics for seed in seeds])
