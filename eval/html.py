"""The HTML page of a retrieval run: sample queries and their top-5 results, thumbnails, hits marked."""

from __future__ import annotations

import html
from pathlib import Path

from .sets import RetrievalSet

THUMB = 160

STYLE = """body{font-family:sans-serif;margin:24px;color:#222}h2{margin-top:32px}
.q{display:flex;gap:12px;align-items:flex-start;margin:12px 0;padding:8px;border-bottom:1px solid #ddd}
.q img{width:120px;height:120px;object-fit:cover;border:4px solid #ccc}.hit{border-color:#2a2!important}
.miss{border-color:#c33!important}ol{margin:0}li.hit{color:#1a7a1a;font-weight:bold}li.miss{color:#555}
.query{width:220px;font-weight:bold}table{border-collapse:collapse}td,th{padding:4px 10px;border:1px solid #ccc}"""


def _thumbs(ds: RetrievalSet, indices: set[int], folder: Path) -> dict[int, str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = {}
    for i, image in ds.images.iter_images(sorted(indices)):
        image.thumbnail((THUMB, THUMB))
        name = f"{i}.jpg"
        image.save(folder / name, quality=85)
        names[i] = f"{folder.name}/{name}"
    return names


def write_retrieval_html(path: str | Path, ds: RetrievalSet, result: dict, title: str) -> Path:
    """``path`` (HTML) and its thumbnail folder beside it; every image it shows is on disk."""
    path = Path(path)
    ex = result["examples"]
    needed = {q["query"] for q in ex["image_queries"]} | {i for q in ex["text_queries"] for i in q["results"]}
    thumbs = _thumbs(ds, needed, path.with_name(path.stem + "_thumbs"))
    texts, text_to_image = ds.texts, ds.text_to_image
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             f"<p>{result['images']} images, {result['texts']} captions. Source: {html.escape(ds.source)}</p>",
             "<table><tr><th>metric</th><th>value (%)</th><th>chance (%)</th></tr>"]
    for k, v in result["metrics"].items():
        if k == "approximate":
            continue
        chance = result["chance"].get(k)
        value = v if k == "rsum" else 100 * v  # rsum is already a sum of percentages
        parts.append(f"<tr><td>{k}</td><td>{value:.2f}</td><td>{'' if chance is None else f'{100 * chance:.2f}'}"
                     f"</td></tr>")
    parts.append("</table><h2>Image → text: top-5 captions</h2>")
    for q in ex["image_queries"]:
        items = "".join(f"<li class='{'hit' if hit else 'miss'}'>{'✓ ' if hit else ''}{html.escape(texts[t])}</li>"
                        for t, hit in zip(q["results"], q["hits"]))
        parts.append(f"<div class='q'><img src='{thumbs[q['query']]}' alt='query image {q['query']}'>"
                     f"<ol>{items}</ol></div>")
    parts.append("<h2>Text → image: top-5 images</h2>")
    for q in ex["text_queries"]:
        imgs = "".join(f"<img class='{'hit' if hit else 'miss'}' src='{thumbs[i]}' alt='result {i}' "
                       f"title='{'hit' if hit else 'not a positive'}'>" for i, hit in zip(q["results"], q["hits"]))
        parts.append(f"<div class='q'><div class='query'>{html.escape(texts[q['query']])}<br>"
                     f"<small>(image {text_to_image[q['query']]})</small></div>{imgs}</div>")
    parts.append("<p>Green border or ✓: a positive; red border: not a positive.</p></body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
