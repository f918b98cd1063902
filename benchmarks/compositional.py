"""InfoNCE, NegCLIP and the fusion model with hard-negative captions, trained on the same scenes for the same
steps, compared on the held-out compositional set.

    python benchmarks/compositional.py                # builds the data, trains what is missing, writes the table
    python benchmarks/compositional.py --table-only   # the table of the finished runs

The data is the demo's shapes world with a larger share of scenes (``python -m data_prep demo --scene-share``)
and a larger compositional set, so that a 5-point difference is several paired standard errors. Each config
trains ``tiny`` (or ``tiny_fusion``) for STEPS steps into runs/compositional/NAME; a finished run is reused.
Written, when every run has finished: benchmarks/compositional.md (accuracy per category with its standard
error, NegCLIP − InfoNCE and ITM − embeddings as paired differences, retrieval R@1 and training time) and
docs/compositional_examples.png (held-out scenes, their true and swapped captions, and what each model chose).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from mmcontrast.errors import UserError, run_main

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs/compositional"
DATA = OUT / "data"
SCENE_SHARE, COMPOSITIONAL_SIZE = 0.5, 1000
STEPS, WARMUP = 1260, 100
SHARDS_NEGATIVES = ["data.negatives=shards", "data.negatives_per_sample=3"]  # the scenes' oracle-checked ones
RUNS = {  # name: (config, overrides)
    "clip": ("training/configs/tiny.yaml", []),
    "negclip": ("training/configs/objectives/negclip.yaml", SHARDS_NEGATIVES),
    "fusion": ("training/configs/tiny_fusion_negatives.yaml", [*SHARDS_NEGATIVES, "eval.rerank_k=16"]),
}
CATEGORIES = ["swap_att", "swap_obj", "replace_rel", "replace_att", "replace_obj", "add_att", "add_obj"]
TABLE = ROOT / "benchmarks/compositional.md"
FIGURE = ROOT / "docs/compositional_examples.png"


def build_data() -> None:
    run([sys.executable, "-m", "data_prep", "demo", "--out", str(DATA), "--scene-share", str(SCENE_SHARE),
         "--compositional-size", str(COMPOSITIONAL_SIZE)], "building the data")


def run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, cwd=ROOT)
    if proc.returncode:
        raise UserError(f"{what} failed (exit status {proc.returncode}, its error above): {' '.join(cmd)}")


def finished(name: str) -> bool:
    return (OUT / name / "final").is_dir()


def train(name: str) -> None:
    """Train one run; its wall time (data loading and the final evaluation included) goes to wall_seconds.txt."""
    config, extra = RUNS[name]
    start = time.perf_counter()
    run([sys.executable, "-m", "training", "--config", config, "--output", str(OUT / name), "--resume", "auto",
         f"data.train={DATA}/train", f"eval.retrieval={DATA}/retrieval", f"eval.zeroshot={DATA}/zeroshot",
         f"eval.compositional={DATA}/compositional",
         f"schedule.steps={STEPS}", f"schedule.warmup={WARMUP}", "checkpoint.every=420", *extra],
        f"training {name}")
    (OUT / name / "wall_seconds.txt").write_text(f"{time.perf_counter() - start:.1f}\n")


def run_facts(name: str) -> dict:
    """The final held-out retrieval (and re-ranked retrieval) and the wall time of the run."""
    rows = [json.loads(line) for line in (OUT / name / "metrics.jsonl").read_text().splitlines()]
    wall = OUT / name / "wall_seconds.txt"
    minutes = float(wall.read_text()) / 60 if wall.is_file() else float("nan")
    return {"eval": [r for r in rows if "eval" in r][-1]["eval"], "train_minutes": minutes}


def evaluate(name: str) -> dict:
    import mmcontrast as mc
    from eval.compositional import run_compositional
    from eval.compositional_sets import read_shapes

    model, preprocess, tokenizer = mc.load(str(OUT / name / "final"))
    return run_compositional(model, preprocess, tokenizer, read_shapes(DATA / "compositional"), progress=False)


def accuracy(scorer: dict, category: str) -> str:
    c = scorer["categories"][category_key(scorer["categories"], category)]
    return f"{100 * c['acc']:.1f} ± {100 * c['acc_stderr']:.1f}"


def category_key(keys, category: str) -> str:
    return next(k for k in keys if k.endswith(f"/{category}") or k == category)


def difference(a: dict, b: dict, category: str) -> str:
    from mmcontrast.metrics.compositional import paired_difference
    d, se = paired_difference(a["correct"][category_key(a["correct"], category)],
                              b["correct"][category_key(b["correct"], category)])
    return f"{100 * d:+.1f} ± {100 * se:.1f} ({d / se:+.1f} s.e.)"


def scorers(results: dict) -> dict:
    """{column name: scorer}: each run's embeddings, and the fusion run's ITM head."""
    out = {name: r["scorers"]["embeddings"] for name, r in results.items()}
    if "fusion" in results:
        out["fusion"] = results["fusion"]["scorers"]["embeddings"]
        out["fusion ITM"] = results["fusion"]["scorers"]["itm"]
    return out


def minutes(value: float) -> str:
    return "not recorded" if value != value else f"{value:.1f} min"  # runs made outside this script: no wall time


def table(results: dict, facts: dict) -> str:
    columns = scorers(results)
    pairs = [(a, b) for a, b in (("negclip", "clip"), ("fusion ITM", "fusion")) if a in columns and b in columns]
    lines = [f"Held-out compositional set ({COMPOSITIONAL_SIZE} items per category, chance 50 %) after {STEPS} "
             f"steps of batch 128 on the demo world with {SCENE_SHARE:.0%} scenes; accuracy ± its standard error, "
             "differences ± their paired standard error. `python benchmarks/compositional.py`", "",
             "| category | " + " | ".join(columns) + "".join(f" | {a} − {b}" for a, b in pairs) + " |",
             "|---|" + "---:|" * (len(columns) + len(pairs))]
    for category in CATEGORIES:
        lines.append(f"| {category} | " + " | ".join(accuracy(s, category) for s in columns.values())
                     + "".join(f" | {difference(columns[a], columns[b], category)}" for a, b in pairs) + " |")
    lines += ["", "| run | image→text R@1 | text→image R@1 | zero-shot acc1 | ITM re-ranked top 16: i→t / t→i R@1 | "
              "wall time |", "|---|---:|---:|---:|---:|---:|"]
    for name, f in facts.items():
        r, z = f["eval"]["retrieval"], f["eval"]["zeroshot"]
        rr = f["eval"].get("retrieval_reranked")
        reranked = f"{100 * rr['text_retrieval_recall@1']:.2f} / {100 * rr['image_retrieval_recall@1']:.2f}" if rr else ""
        lines.append(f"| {name} | {100 * r['text_retrieval_recall@1']:.2f} | {100 * r['image_retrieval_recall@1']:.2f} | "
                     f"{100 * z['acc1']:.2f} | {reranked} | {minutes(f['train_minutes'])} |")
    return "\n".join(lines) + "\n"


def figure(results: dict, path: Path, per_category: int = 2) -> None:
    """Held-out swap_att / swap_obj / replace_rel scenes: the image, its true caption and its negative, and which
    one each model's score preferred (✓: the true caption)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    columns = scorers(results)
    picks = []
    for category in ("swap_att", "swap_obj", "replace_rel"):
        items = list(json.loads((DATA / f"compositional/{category}.json").read_text()).values())
        picks += [(category, k, items[k]) for k in range(0, 2 * per_category, 2)]  # one of each mirrored pair
    fig, axes = plt.subplots(1, len(picks), figsize=(2.7 * len(picks), 4.4))
    for ax, (category, k, item) in zip(axes, picks):
        ax.imshow(Image.open(DATA / "compositional/images" / item["filename"]))
        ax.set_xticks([])
        ax.set_yticks([])
        verdicts = "  ".join(f"{name} {'✓' if bool(s['correct'][category_key(s['correct'], category)][k]) else '✗'}"
                             for name, s in columns.items())
        ax.set_title(f"{category}\n{verdicts}", fontsize=8)
        ax.set_xlabel("true: " + "\n".join(textwrap.wrap(item["caption"], 32)) + "\n\nnegative: "
                      + "\n".join(textwrap.wrap(item["negative_caption"], 32)), fontsize=6.5, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(names: list[str], table_only: bool) -> None:
    unknown = sorted(set(names) - set(RUNS))
    if unknown:
        raise UserError(f"--runs {' '.join(unknown)}: not a run of this benchmark; choose from {', '.join(RUNS)}")
    if not table_only:
        if not (DATA / "manifest.json").is_file() or not (DATA / "compositional").is_dir():
            build_data()
        for name in names:
            if not finished(name):
                train(name)
    missing = [name for name in names if not finished(name)]
    if missing:
        raise UserError(f"no finished run for {', '.join(missing)} under {OUT}: run without --table-only")
    results = {name: evaluate(name) for name in names}
    text = table(results, {name: run_facts(name) for name in names})
    print(text)
    TABLE.write_text(text)
    figure(results, FIGURE)
    print(f"wrote {TABLE.relative_to(ROOT)} and {FIGURE.relative_to(ROOT)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=list(RUNS), help=f"which of {', '.join(RUNS)} (default: all)")
    parser.add_argument("--table-only", action="store_true", help="tabulate finished runs; train nothing")
    args = parser.parse_args()
    run_main(lambda: main(args.runs, args.table_only))
