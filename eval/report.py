"""Benchmark outputs: JSON in CLIP_benchmark's schema and a Markdown table beside each number's chance."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from mmcontrast.errors import UserError

TASKS = {"zeroshot": "zeroshot_classification", "retrieval": "zeroshot_retrieval", "linear_probe": "linear_probe"}


def result_json(dataset: str, model: str, pretrained: str, task: str, metrics: dict) -> dict:
    """The record ``clip_benchmark build`` reads."""
    return {"dataset": dataset, "model": model, "pretrained": pretrained, "task": TASKS[task],
            "metrics": metrics, "language": "en"}


def _pct(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def markdown_table(rows: list[tuple[str, float, float | None]], title: str = "") -> str:
    """Rows of (metric, value, chance) as a Markdown table in percent."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| metric | value (%) | chance (%) | × chance |", "|---|---:|---:|---:|"]
    for name, value, chance in rows:
        ratio = f"{value / chance:.1f}" if chance else ""
        lines.append(f"| {name} | {_pct(value)} | {_pct(chance) if chance is not None else ''} | {ratio} |")
    return "\n".join(lines) + "\n"


def result_rows(result: dict) -> list[tuple[str, float, float | None]]:
    """Table rows of a run's metrics (and of its re-ranked metrics, labelled so), each with its chance."""
    chance = result.get("chance", {})
    rows = metric_rows(result["metrics"], chance)
    if "reranked" in result:
        label = f", ITM re-ranked top {result['reranked']['k']}"
        rows += [(name + label, value, c) for name, value, c in metric_rows(result["reranked"]["metrics"], chance)]
    return rows


def metric_rows(metrics: dict, chance: dict) -> list[tuple[str, float, float | None]]:
    """(name, value, chance) in fractions. ``mean_recall`` and ``rsum`` (the sum of the six recalls, in percent:
    a fraction of 100 here) get the mean and the sum of the recalls' chance levels."""
    recalls = [k for k in metrics if "_retrieval_recall@" in k]
    known = recalls and all(k in chance for k in recalls)
    rows = []
    for name, value in metrics.items():
        if name == "approximate":
            continue
        if name == "rsum":
            rows.append((name, value / 100, sum(chance[k] for k in recalls) if known else None))
        elif name == "mean_recall":
            rows.append((name, value, sum(chance[k] for k in recalls) / len(recalls) if known else None))
        else:
            rows.append((name, value, chance.get(name)))
    return rows


def thumbs_dir(page: str | Path) -> Path:
    """The thumbnail folder beside an HTML page."""
    page = Path(page)
    return page.with_name(page.stem + "_thumbs")


def output_paths(output: str | Path, task: str) -> dict[str, Path]:
    """Every path ``python -m eval`` writes for ``--output``: the JSON there, the table and page or chart beside it.

    ``--output`` must end in ``.json``, so that no derived name can be ``--output`` itself."""
    out = Path(output)
    beside = "the HTML page (.html, _thumbs/)" if task == "retrieval" else "the chart (.classes.png, .classes.json)"
    if out.suffix != ".json":
        raise UserError(f"--output {str(output)[:200]!r} does not end in .json: the result JSON is written there, "
                        f"the Markdown table (.md) and {beside} beside it; give a NAME.json")
    paths = {"result JSON": out, "Markdown table": out.with_suffix(".md")}
    if task == "retrieval":
        page = out.with_suffix(".html")
        return {**paths, "HTML page": page, "thumbnail folder": thumbs_dir(page)}
    return {**paths, "chart": out.with_suffix(".classes.png"), "per-class JSON": out.with_suffix(".classes.json")}


_THUMB = re.compile(r"[0-9]+\.jpg")


def check_outputs(outputs: dict[str, Path], inputs: dict[str, Path]) -> None:
    """Refuse, before anything is written, outputs that collide with each other or with an input (the same path,
    or an input inside the thumbnail folder), an output where a directory (or for the folder, a file) is, a
    thumbnail folder holding files this program does not write, and a folder that cannot be written."""
    seen: dict[Path, str] = {}
    for what, path in outputs.items():
        out = path.resolve()
        if out in seen:
            raise UserError(f"the {what} and the {seen[out]} would both be {path}; give another --output")
        seen[out] = what
        for source, given in inputs.items():
            src = given.resolve()
            if out == src or (what == "thumbnail folder" and out in src.parents):
                relation = "is" if out == src else "holds"
                raise UserError(f"the {what} {path} {relation} the input {source} {given}; nothing was written: "
                                f"give an --output elsewhere")
        _check_writable(what, path)


def _check_writable(what: str, path: Path) -> None:
    folder = what == "thumbnail folder"
    if path.exists() and path.is_dir() != folder:
        raise UserError(f"the {what} {path} would replace an existing {'file' if folder else 'directory'}; "
                        f"nothing was written: give another --output")
    if folder and path.is_dir():
        foreign = sorted(e.name for e in path.iterdir() if not (_THUMB.fullmatch(e.name) and e.is_file()))
        if foreign:
            raise UserError(f"the {what} {path} holds {len(foreign)} entr{'y' if len(foreign) == 1 else 'ies'} "
                            f"this program does not write ({foreign[0][:80]!r} ...); nothing was written: move "
                            f"them, or give another --output")
    parent = path.parent.resolve()
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"the {what} {path} cannot be written: {parent} is "
                        f"{'not a directory' if not parent.is_dir() else 'not writable'}; give another --output")


def write_outputs(outputs: dict[str, Path], record: dict, table: str) -> None:
    """The result JSON and the Markdown table of ``output_paths``."""
    outputs["result JSON"].parent.mkdir(parents=True, exist_ok=True)
    outputs["result JSON"].write_text(json.dumps(record, indent=2))
    outputs["Markdown table"].write_text(table)


def plot_per_class(path: str | Path, classnames: list[str], recall: list[float], title: str) -> Path:
    """A horizontal bar chart of per-class recall (accuracy), worst classes at the top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = sorted(range(len(classnames)), key=lambda c: (math.isnan(recall[c]), recall[c]))
    fig, ax = plt.subplots(figsize=(8, max(3, 0.22 * len(classnames) + 1)))
    ax.barh([classnames[c] for c in order], [0 if math.isnan(recall[c]) else 100 * recall[c] for c in order],
            color="#3b7dd8")
    ax.invert_yaxis()
    ax.set_xlabel("per-class recall (%)")
    ax.set_xlim(0, 100)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def compositional_output_paths(output: str | Path) -> dict[str, Path]:
    """What ``python -m eval compositional`` writes for ``--output NAME.json``: the JSON, NAME.md, the failures
    page NAME.html and its thumbnail folder."""
    return output_paths(output, "retrieval")


def compositional_json(dataset: str, model: str, pretrained: str, result: dict) -> dict:
    """CLIP_benchmark's record (task ``image_caption_selection``) for the embeddings' scores, with every
    category's metrics and chance; a fusion model's ITM scores and ITM − embeddings beside them."""
    def part(scored):
        return {"metrics": scored["metrics"], "categories": scored["categories"]}

    pure = result["scorers"]["embeddings"]
    record = {"dataset": dataset, "model": model, "pretrained": pretrained, "task": "image_caption_selection",
              "metrics": pure["metrics"], "categories": pure["categories"], "chance": pure["chance"],
              "language": "en"}
    if "itm" in result["scorers"]:
        record["itm"] = part(result["scorers"]["itm"])
        record["itm_minus_embeddings"] = result["differences"]
    return record


def _compositional_rows(scored: dict, kind: str) -> list[tuple[str, str, float, float, int, int | None]]:
    """(set, metric, value, standard error, items, ties) of a scored set, its headline last."""
    from mmcontrast.metrics.compositional import binomial_stderr

    rows = []
    if kind not in ("aro_vgr", "aro_vga"):  # ARO has hundreds of relations: its JSON has them all
        for name, m in scored["categories"].items():
            keys = ("text_acc", "image_acc", "acc") if scored["chance"][name]["image_acc"] < 1 else ("acc",)
            rows += [(name, k, m[k], binomial_stderr(m[k], m["n"]), m["n"], m["ties"]) for k in keys]
    m = scored["metrics"]
    if kind in ("aro_vgr", "aro_vga"):
        rows += [(kind, "acc (macro)", m["acc"], m["acc_stderr"], m["n"], m["ties"]),
                 (kind, "micro_acc", m["micro_acc"], binomial_stderr(m["micro_acc"], m["n"]), m["n"], None)]
    elif kind != "winoground":
        rows.append((f"{kind} (mean over categories)", "acc", m["acc"], m["acc_stderr"], m["n"], m["ties"]))
    return rows


def compositional_table(result: dict, kind: str, title: str = "") -> str:
    """A Markdown table in percent: each category's accuracy ± its standard error beside chance, items and ties;
    for a fusion model the ITM scores and ITM − embeddings (± the paired standard error) in more columns."""
    pure = result["scorers"]["embeddings"]
    itm = result["scorers"].get("itm")
    head = "| set | metric | embeddings (%) | chance (%) | items | ties |"
    if itm:
        head = ("| set | metric | embeddings (%) | ITM (%) | ITM − embeddings | chance (%) | items "
                "| ties (emb / ITM) |")
    lines = ([f"### {title}", ""] if title else []) + [head, "|---|---|" + "---:|" * (head.count("|") - 3)]
    itm_rows = _compositional_rows(itm, kind) if itm else []
    for n, (name, metric, value, se, items, ties) in enumerate(_compositional_rows(pure, kind)):
        chance = pure["chance"].get(name, pure["chance"]["overall"])[metric.split()[0].replace("micro_", "")]
        cells = [name, metric, f"{_pct(value)} ± {_pct(se)}"]
        tie_cell = "" if ties is None else str(ties)
        if itm:
            _, _, v2, se2, _, ties2 = itm_rows[n]
            diff = result["differences"].get(name) if metric == "acc" else None
            cells += [f"{_pct(v2)} ± {_pct(se2)}",
                      "" if diff is None else f"{100 * diff['diff']:+.2f} ± {_pct(diff['stderr'])}"]
            tie_cell = "" if ties is None else f"{ties} / {ties2}"
        lines.append("| " + " | ".join(cells + [_pct(chance), f"{items:,}", tie_cell]) + " |")
    return "\n".join(lines) + "\n"
