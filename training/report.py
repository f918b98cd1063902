"""The run report: ``report.md`` (held-out results beside chance) and ``curves.png`` (loss, recall).
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mmcontrast.metrics.compositional import binomial_stderr  # noqa: E402

HEADLINE = [
    ("retrieval", "text_retrieval_recall@1", "image→text R@1"),
    ("retrieval", "text_retrieval_recall@5", "image→text R@5"),
    ("retrieval", "text_retrieval_recall@10", "image→text R@10"),
    ("retrieval", "image_retrieval_recall@1", "text→image R@1"),
    ("retrieval", "image_retrieval_recall@5", "text→image R@5"),
    ("retrieval", "image_retrieval_recall@10", "text→image R@10"),
    ("zeroshot", "acc1", "zero-shot acc1"),
    ("zeroshot", "acc5", "zero-shot acc5"),
]

WINOGROUND_ROWS = (("text_acc", "text"), ("image_acc", "image"), ("acc", "group"))  # Thrush et al. 2022's scores
PARTS = ("loss_pure", "loss_itm", "loss_rerank", "loss_zorro")


def read_metrics(path: Path) -> tuple[list[dict], list[dict]]:
    """(training records, eval records), the last record per step winning (a resumed run rewrites steps)."""
    train, evals = {}, {}
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if "eval" in rec:
            evals[rec["step"]] = rec
        elif "loss" in rec and "skipped_step" not in rec:
            train[rec["step"]] = rec
    return [train[k] for k in sorted(train)], [evals[k] for k in sorted(evals)]


def results_table(result: dict) -> str:
    """Held-out metrics beside chance; with fusion blocks, the ITM re-ranked recalls (and the ITM-scored
    compositional accuracies) beside the dual encoder's."""
    reranked = result.get("retrieval", {}).get("reranked")
    itm = result.get("compositional", {}).get("metrics", {}).get("itm")
    extra = ""
    if reranked or itm:
        names = ([f"ITM re-ranked, top {reranked['k']}"] if reranked else []) + (["ITM-scored"] if itm else [])
        extra = f" {' / '.join(names)} (%) |"
    lines = [f"| metric | held-out (%) |{extra} chance (%) | × chance |",
             "|---|---:|" + ("---:|" if extra else "") + "---:|---:|"]
    for task, key, label in HEADLINE:
        if task not in result:
            continue
        value, chance = result[task]["metrics"][key], result[task]["chance"][key]
        cell = ""
        if extra:
            cell = f" {100 * reranked['metrics'][key]:.2f} |" if reranked and key in reranked["metrics"] else " |"
        lines.append(f"| {label} | {100 * value:.2f} |{cell} {100 * chance:.2f} | {value / chance:.1f} |")
    if "compositional" in result:
        lines += compositional_rows(result["compositional"], bool(extra))
    return "\n".join(lines) + "\n"


def compositional_rows(comp: dict, extra_column: bool) -> list[str]:
    """One row per category (its accuracy ± standard error), Winoground's text / image / group scores, and
    SugarCrepe's mean over the categories, each beside its chance level; the ITM-scored value in the extra
    column when the model has fusion blocks."""
    pure, itm = comp["metrics"]["embeddings"], comp["metrics"].get("itm")
    lines, one_image = [], sum(c != "mean" and "text_acc" not in m for c, m in pure.items())
    for category, m in pure.items():
        two_images = "text_acc" in m  # Winoground-style: the text, image and group scores
        for key, name in WINOGROUND_ROWS if two_images else (("acc", ""),):
            label = f"{category} {name}".strip() if category != "mean" else f"mean of {one_image} categories"
            cell = f" {_with_stderr(itm[category], key)} |" if itm else (" |" if extra_column else "")
            chance = comp["chance"][category][key]
            lines.append(f"| {label} (compositional) | {_with_stderr(m, key)} |{cell} {100 * chance:.2f} "
                         f"| {m[key] / chance:.1f} |")
    return lines


def _with_stderr(m: dict, key: str) -> str:
    """``m[key]`` ± its standard error, in percent: ``acc_stderr`` for acc, the binomial one otherwise."""
    se = m["acc_stderr"] if key == "acc" else binomial_stderr(m[key], m["n"])
    return f"{100 * m[key]:.2f} ± {100 * se:.2f}"


def plot_curves(train: list[dict], evals: list[dict], path: Path) -> None:
    fig, (ax_loss, ax_rec) = plt.subplots(1, 2, figsize=(11, 4))
    steps = [r["step"] for r in train]
    ax_loss.plot(steps, [r["loss"] for r in train], label="total")
    for part in PARTS:  # the terms of an objective with several, e.g. fusion blocks
        if train and part in train[0]:
            ax_loss.plot(steps, [r.get(part, float("nan")) for r in train], label=part.removeprefix("loss_"))
    if len(ax_loss.lines) > 1:
        ax_loss.legend()
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("training loss")
    ax_loss.grid(alpha=0.3)
    for task, key, label in HEADLINE:
        points = [(r["step"], r["eval"][task][key]) for r in evals if task in r["eval"]]
        if points and (key.endswith("@1") or key == "acc1"):
            line, = ax_rec.plot(*zip(*points), marker="o", label=label)
            reranked = [(r["step"], r["eval"]["retrieval_reranked"][key]) for r in evals
                        if task == "retrieval" and "retrieval_reranked" in r["eval"]]
            if reranked:
                ax_rec.plot(*zip(*reranked), marker="s", linestyle="--", color=line.get_color(),
                            label=f"{label}, ITM re-ranked")
    ax_rec.set_xlabel("step")
    ax_rec.set_ylabel("held-out score")
    ax_rec.set_title("held-out recall@1 and zero-shot accuracy")
    ax_rec.grid(alpha=0.3)
    if ax_rec.lines:
        ax_rec.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(run: Path, result: dict, faults: dict[str, int] | None = None) -> str:
    """Write ``report.md`` and ``curves.png`` into ``run``; returns the Markdown table.

    ``faults``: what the loader skipped during training, by reason."""
    run = Path(run)
    train, evals = read_metrics(run / "metrics.jsonl")
    plot_curves(train, evals, run / "curves.png")
    table = results_table(result)
    last = train[-1] if train else {}
    lines = [f"# Run report: {run}", "",
             f"Held-out evaluation after {last.get('step', '?')} steps "
             f"(final loss {last.get('loss', float('nan')):.3f}, logit scale {last.get('logit_scale', 0):.1f}).", "",
             table, "![curves](curves.png)", ""]
    if faults is not None:
        skipped = ", ".join(f"{reason} {n}" for reason, n in faults.items()) or "nothing"
        lines += [f"Skipped while reading the training shards: {skipped}.", ""]
    if "compositional" in result:
        c = result["compositional"]
        lines.insert(5, f"Compositional set {c['root']}: {c['items']} test cases over {c['images']} images. Its "
                        f"failures, shown: `python -m eval compositional --model {run / 'final'} --dataset shapes "
                        f"--root {c['root']}`.\n")
    if "retrieval" in result:
        r = result["retrieval"]
        lines.insert(4, f"Retrieval set: {r['images']} images, {r['texts']} captions. "
                        f"Zero-shot set: {result.get('zeroshot', {}).get('n', 0)} images, "
                        f"{result.get('zeroshot', {}).get('classes', 0)} classes.\n")
    (run / "report.md").write_text("\n".join(lines))
    return table

