"""Benchmark outputs: JSON in CLIP_benchmark's schema and a Markdown table beside each number's chance."""

from __future__ import annotations

import json
import math
from pathlib import Path

TASKS = {"zeroshot": "zeroshot_classification", "retrieval": "zeroshot_retrieval"}


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


def write_outputs(output: str | Path, record: dict, table: str) -> None:
    """``output`` (JSON) and the same path with ``.md`` holding the table."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(record, indent=2))
    output.with_suffix(".md").write_text(table)


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
