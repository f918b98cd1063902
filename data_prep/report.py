"""``report.md`` and ``report.png`` of a shard build: what went in, what was skipped and why, and histograms of
image sizes and caption lengths — what a user checks before spending GPU hours on the shards."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

REASONS = {
    "missing_image": "the image file or field is missing",
    "remote_image": "the image column holds a URL: download the images first (img2dataset), then shard its output",
    "unreadable_image": "the image does not decode (corrupt or not an image)",
    "unreadable_shard": "an input shard breaks midway (samples before the break are kept)",
    "too_small": "shorter side below --min-size",
    "bad_aspect": "longer / shorter side above --max-aspect",
    "missing_caption": "no caption file or field",
    "empty_caption": "every caption is empty after clean-up",
    "caption_too_short": "every caption has fewer words than --min-caption-words",
    "caption_too_long": "every caption has more words than --max-caption-words",
    "duplicate": "the same image bytes as an earlier sample",
}


def quantiles(counts: Counter, qs=(0.0, 0.05, 0.5, 0.95, 1.0)) -> list[float]:
    """Quantiles of a value → count histogram (the lower value at each rank)."""
    items = sorted(counts.items())
    total = sum(n for _, n in items)
    out = []
    for q in qs:
        rank, seen = q * (total - 1), 0
        for value, n in items:
            seen += n
            if seen > rank:
                out.append(value)
                break
    return out


def _plot(path: Path, stats: dict[str, Counter]) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [("short_side", "shorter side of the original image (px)"),
              ("aspect", "aspect ratio (longer / shorter side)"),
              ("caption_words", "caption length (words)")]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    for ax, (key, label) in zip(axes, panels):
        counts = stats[key]
        if counts:
            values, weights = zip(*sorted(counts.items()))
            ax.hist(values, weights=weights, bins=min(50, len(values)) if len(values) > 1 else 1,
                    color="#4477aa", edgecolor="white", linewidth=0.3)
        ax.set_xlabel(label)
        ax.set_ylabel("captions" if key == "caption_words" else "images")
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def write_report(out: Path, manifest: dict, stats: dict[str, Counter], examples: dict[str, list[str]]) -> None:
    records, kept = manifest["records"], manifest["total"]
    src, opts = manifest["source"], manifest["options"]
    shards = f"{len(manifest['shards'])} shard{'s' * (len(manifest['shards']) != 1)}"
    lines = [f"# Shards of `{src['input']}`", "",
             f"{kept:,} samples with {manifest['captions']:,} captions in {shards} "
             f"({manifest['bytes'] / 2**20:,.1f} MiB), from {records:,} input records ({src['format']}); "
             f"{records - kept:,} skipped.", "",
             "| skipped because | samples | examples |", "|---|---:|---|"]
    for reason, n in sorted(manifest["skipped"].items(), key=lambda kv: -kv[1]):
        named = ", ".join(f"`{e}`" for e in examples.get(reason, [])[:3])
        lines.append(f"| {reason}: {REASONS.get(reason, reason)} | {n:,} | {named} |")
    if not manifest["skipped"]:
        lines.append("| (nothing skipped) | 0 | |")
    lines += ["", "| | min | 5 % | median | 95 % | max |", "|---|---:|---:|---:|---:|---:|"]
    for key, label in (("short_side", "shorter side (px)"), ("aspect", "aspect ratio"),
                       ("caption_words", "caption words")):
        if stats[key]:
            lines.append(f"| {label} | " + " | ".join(f"{v:g}" for v in quantiles(stats[key])) + " |")
    lines += ["", "![sizes and caption lengths](report.png)", "", "Options: " +
              ", ".join(f"`{k}={v}`" for k, v in opts.items()), ""]
    (out / "report.md").write_text("\n".join(lines))
    _plot(out / "report.png", stats)
