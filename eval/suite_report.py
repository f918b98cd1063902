"""The suite's outputs: open_clip's results table, CLIP_benchmark's JSON per evaluation, a bar chart, a comparison.

``results.csv`` has the columns of open_clip's ``docs/openclip_results.csv``: ``name``, ``pretrained``,
``Average perf. on K datasets``, then one column per dataset measured, under open_clip's title and in its order.
Those 38 titles are DataComp's (``tasklist.yml`` ``name:``), whose evaluation the table is; datasets outside it
(Flickr8k, Fashion-MNIST, the compositional sets, linear probes) follow under their own titles, outside the
average. Values are fractions of each column's main metric, DataComp's ``main_metric``: mean_per_class_recall for
Caltech-101, Oxford Flowers-102, Oxford-IIIT Pet and FGVC Aircraft, mean_recall@1 (the mean of text→image and
image→text recall@1) for Flickr and MSCOCO, acc1 for the others (``DatasetSpec.metric`` holds a classification
set's); a compositional set's is its ``acc``. The average is their plain mean (DataComp's ``aggregate_scores.py``)
over the open_clip columns that every model compared has.

``results.md`` lists every known dataset, measured or not (missing: the paths looked for; failed: the error;
skipped: why); with a second model, its values and the differences (second − first) beside the first's.
``results.png`` draws the same as bars. ``<slot>/<task>/<dataset>.json`` holds each evaluation as
CLIP_benchmark writes it (``eval.report``), slot ``model`` for ``--model`` and ``compare`` for ``--compare``.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from .report import compositional_json, result_json
from .suite import Found, Outcome

# CLIP_benchmark's dataset name → open_clip's column title, in open_clip's column order
OPENCLIP_COLUMNS = {
    "imagenet1k": "ImageNet 1k", "caltech101": "Caltech-101", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100",
    "clevr_count_all": "CLEVR Counts", "clevr_closest_object_distance": "CLEVR Distance",
    "country211": "Country211", "dtd": "Describable Textures", "eurosat": "EuroSAT",
    "fgvc_aircraft": "FGVC Aircraft", "food101": "Food-101", "gtsrb": "GTSRB", "imagenet_sketch": "ImageNet Sketch",
    "imagenetv2": "ImageNet v2", "imagenet-a": "ImageNet-A", "imagenet-o": "ImageNet-O", "imagenet-r": "ImageNet-R",
    "kitti_closest_vehicle_distance": "KITTI Vehicle Distance", "mnist": "MNIST", "objectnet": "ObjectNet",
    "flowers": "Oxford Flowers-102", "pets": "Oxford-IIIT Pet", "voc2007": "Pascal VOC 2007",
    "pcam": "PatchCamelyon", "renderedsst2": "Rendered SST2", "resisc45": "RESISC45", "cars": "Stanford Cars",
    "stl10": "STL-10", "sun397": "SUN397", "svhn": "SVHN", "flickr30k": "Flickr", "mscoco": "MSCOCO",
    "winogavil": "WinoGAViL", "iwildcam": "iWildCam", "camelyon17": "Camelyon17", "fmow": "FMoW",
    "dollar_street": "Dollar Street", "geode": "GeoDE",
}
OTHER_TITLES = {
    "flickr8k": "Flickr8k", "fashion_mnist": "Fashion-MNIST", "kmnist": "KMNIST", "emnist": "EMNIST",
    "fer2013": "FER2013", "voc2007_multilabel": "Pascal VOC 2007 (multi-label)", "sugar_crepe": "SugarCrepe",
    "winoground": "Winoground", "aro_vgr": "ARO VG-Relation", "aro_vga": "ARO VG-Attribution",
    "shapes": "Shapes (compositional)",
}
OPENCLIP_TASKS = ("zeroshot", "retrieval")   # open_clip's table holds zero-shot classification and retrieval only
SLOTS = ("model", "compare")                 # the JSON folders of --model and --compare


@dataclass
class ModelResults:
    """One model's outcomes over the suite."""
    model: str
    pretrained: str
    outcomes: list[Outcome]


def _key(dataset: str) -> str:
    return dataset.removeprefix("vtab/")  # DataComp runs vtab/caltech101 where CLIP_benchmark also has caltech101


def in_openclip_table(task: str, dataset: str) -> bool:
    return task in OPENCLIP_TASKS and _key(dataset) in OPENCLIP_COLUMNS


def column_title(task: str, dataset: str) -> str:
    """open_clip's title for the column (a linear probe's is the dataset's title, marked so)."""
    title = OPENCLIP_COLUMNS.get(_key(dataset)) or OTHER_TITLES.get(_key(dataset), dataset)
    return f"{title} (linear probe)" if task == "linear_probe" else title


def values(run: ModelResults) -> dict[tuple[str, str], float]:
    """(task, dataset) → the main metric of each evaluation that succeeded."""
    return {(o.task, o.dataset): o.value for o in run.outcomes if o.status == "ok"}


def columns(runs: list[ModelResults]) -> list[tuple[str, str]]:
    """(task, dataset) measured by any model: open_clip's columns in its order, then the others as run."""
    measured = list(dict.fromkeys(c for run in runs for c in values(run)))
    order = {name: n for n, name in enumerate(OPENCLIP_COLUMNS)}
    ours = sorted((c for c in measured if in_openclip_table(*c)), key=lambda c: (order[_key(c[1])], c[0]))
    return ours + [c for c in measured if not in_openclip_table(*c)]


def average(runs: list[ModelResults]) -> tuple[list[tuple[str, str]], list[float | None]]:
    """(the columns averaged, each model's mean over them): open_clip's columns every model has."""
    measured = [values(run) for run in runs]
    shared = [c for c in columns(runs) if in_openclip_table(*c) and all(c in v for v in measured)]
    return shared, [sum(v[c] for c in shared) / len(shared) if shared else None for v in measured]


def differences(runs: list[ModelResults]) -> dict[tuple[str, str], float]:
    """(task, dataset) → second model − first model, where both have the value."""
    first, second = values(runs[0]), values(runs[1])
    return {c: second[c] - first[c] for c in first if c in second}


def average_title(runs: list[ModelResults]) -> str:
    return f"Average perf. on {len(average(runs)[0])} datasets"


def write_csv(path: Path, runs: list[ModelResults]) -> None:
    """open_clip's results table: one row per model, fractions (blank where a model has no value)."""
    cols = columns(runs)
    _, means = average(runs)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "pretrained", average_title(runs)] + [column_title(*c) for c in cols])
        for run, mean in zip(runs, means):
            measured = values(run)
            writer.writerow([run.model, run.pretrained, "" if mean is None else repr(mean)]
                            + [repr(measured[c]) if c in measured else "" for c in cols])


def _pct(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else f"{100 * value:.2f}"


def _cell(o: Outcome) -> str:
    return _pct(o.value) if o.status == "ok" else o.status


def markdown(runs: list[ModelResults], root: str | Path) -> str:
    """Every known dataset with each model's main metric in percent (or missing / failed / skipped), the
    differences with a second model, the average, and below, what was missing, failed or skipped and why."""
    compare = len(runs) == 2
    head = ["task", "dataset", "metric"] + [f"{run.model} (%)" for run in runs]
    head += [f"{runs[1].model} − {runs[0].model}"] if compare else []
    lines = [f"### suite · {' vs '.join(run.model for run in runs)} · {root}", "",
             "| " + " | ".join(head + ["seconds"]) + " |", "|---|---|---|" + "---:|" * (len(head) - 2)]
    diffs = differences(runs) if compare else {}
    for row in zip(*(run.outcomes for run in runs)):
        o = row[0]
        metric = next((x.metric for x in row if x.metric), "")
        cells = [o.task, f"{column_title(o.task, o.dataset)} (`{o.dataset}`)", metric] + [_cell(x) for x in row]
        if compare:
            d = diffs.get((o.task, o.dataset))
            cells.append("" if d is None else f"{100 * d:+.2f}")
        cells.append(" / ".join(f"{x.seconds:.1f}" for x in row) if any(x.status in ("ok", "failed") for x in row)
                     else "")
        lines.append("| " + " | ".join(cells) + " |")
    averaged, means = average(runs)
    cells = ["", f"**{average_title(runs)}**", ""] + [_pct(m) for m in means]
    if compare:
        cells.append("" if None in means else f"{100 * (means[1] - means[0]):+.2f}")
    lines.append("| " + " | ".join(cells + [""]) + " |")
    for status, heading in (("failed", "Failed"), ("missing", "Missing"), ("skipped", "Skipped")):
        listed = [(run, o) for run in runs for o in run.outcomes if o.status == status]
        if status != "failed":  # discovery's: the same for every model
            listed = [(runs[0], o) for o in runs[0].outcomes if o.status == status]
        if listed:
            lines += ["", f"#### {heading} ({len(listed)})", ""]
            lines += [f"- {o.task} `{o.dataset}`{f' ({run.model})' if compare and status == 'failed' else ''}: "
                      f"{o.detail}" for run, o in listed]
    return "\n".join(lines) + "\n"


def plot(path: Path, runs: list[ModelResults], title: str) -> None:
    """Each measured dataset's main metric as bars, one per model; with two, their differences beside."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = columns(runs)
    compare = len(runs) == 2
    fig, axes = plt.subplots(1, 2 if compare else 1, squeeze=False, sharey=True,
                             figsize=(12 if compare else 8, max(3.0, 0.35 * len(cols) * len(runs) + 1.5)))
    ax = axes[0][0]
    height = 0.8 / len(runs)
    for n, run in enumerate(runs):
        measured = values(run)
        at = [i for i, c in enumerate(cols) if c in measured]
        ax.barh([i + n * height for i in at], [100 * measured[cols[i]] for i in at], height=height,
                label=run.model)
    centre = [i + height * (len(runs) - 1) / 2 for i in range(len(cols))]
    ax.set_yticks(centre, [column_title(*c) for c in cols])
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("main metric (%)")
    ax.grid(axis="x", alpha=0.3)
    if not cols:
        ax.text(50, 0.5, "no dataset was measured", ha="center", va="center")
    if len(runs) > 1:
        ax.legend(loc="lower right", fontsize=8)
    if compare:
        diffs = differences(runs)
        at = [i for i, c in enumerate(cols) if c in diffs]
        gains = [100 * diffs[cols[i]] for i in at]
        right = axes[0][1]
        right.barh([centre[i] for i in at], gains, height=0.6,
                   color=["#2a9d4b" if g >= 0 else "#d1495b" for g in gains])
        right.axvline(0, color="black", linewidth=0.8)
        right.set_xlabel(f"{runs[1].model} − {runs[0].model} (points)")
        right.grid(axis="x", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def record(o: Outcome, run: ModelResults) -> dict:
    """The evaluation as CLIP_benchmark's JSON."""
    if o.task == "compositional":
        return compositional_json(o.name, run.model, run.pretrained, o.result)
    out = result_json(o.name, run.model, run.pretrained, o.task, o.result["metrics"])
    if "reranked" in o.result:
        out["reranked"] = o.result["reranked"]
    return out


def json_path(out: Path, slot: str, task: str, dataset: str) -> Path:
    return out / slot / task / f"{dataset.replace('/', '_')}.json"


def output_paths(out: str | Path, found: list[Found], n_models: int) -> dict[str, Path]:
    """Every path the suite may write, by what it is (for ``eval.report.check_outputs`` before anything runs)."""
    out = Path(out)
    paths = {"results CSV": out / "results.csv", "results table": out / "results.md", "chart": out / "results.png"}
    for slot in SLOTS[:n_models]:
        for f in found:
            if f.status == "found":
                paths[f"{slot} {f.task} {f.dataset} JSON"] = json_path(out, slot, f.task, f.dataset)
    return paths


def write_report(out: str | Path, runs: list[ModelResults], root: str | Path) -> list[Path]:
    """Write every output; a JSON left by an earlier run of an evaluation that failed now is removed."""
    import json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for slot, run in zip(SLOTS, runs):
        for o in run.outcomes:
            path = json_path(out, slot, o.task, o.dataset)
            if o.status == "ok":
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(record(o, run), indent=2))
                written.append(path)
            elif o.status == "failed":
                path.unlink(missing_ok=True)
    write_csv(out / "results.csv", runs)
    table = markdown(runs, root)
    (out / "results.md").write_text(table)
    plot(out / "results.png", runs, f"suite · {' vs '.join(run.model for run in runs)}")
    return [out / "results.csv", out / "results.md", out / "results.png"] + written
