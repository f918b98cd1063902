"""The HTML page of a retrieval run: sample queries and their top-5 results, thumbnails, hits marked.

For a query whose first result is wrong the page shows the right answer (the best-ranked positive
caption, or the query's image) and its rank; with ``--rerank-k`` the ITM re-ranked top 5 stands beside
the dual encoder's, with the right answer's rank after re-ranking.
"""

from __future__ import annotations

import html
from pathlib import Path
from urllib.parse import quote

from .report import metric_rows, thumbs_dir
from .sets import RetrievalSet

THUMB = 160

STYLE = """body{font-family:sans-serif;margin:24px;color:#222}h2{margin-top:32px}
.q{display:flex;gap:12px;align-items:flex-start;margin:12px 0;padding:8px;border-bottom:1px solid #ddd}
.q img{width:120px;height:120px;object-fit:cover;border:4px solid #ccc}.hit{border-color:#2a2!important}
.miss{border-color:#c33!important}ol{margin:0}li.hit{color:#1a7a1a;font-weight:bold}li.miss{color:#555}
.query{width:220px;font-weight:bold}table{border-collapse:collapse}td,th{padding:4px 10px;border:1px solid #ccc}
.ranking{display:flex;flex-direction:column;gap:4px}.ranking h3{margin:0;font-size:90%;color:#555}
.row{display:flex;gap:8px}.answer{width:260px;background:#fff6e0;padding:6px}.answer img{border-color:#2a2}"""


def _e(value) -> str:
    """``value`` as text or an attribute value: every ``&<>"'`` escaped, so no input can open markup."""
    return html.escape(str(value), quote=True)


def _img(src: str, alt: str, cls: str = "", title: str = "") -> str:
    extra = (f" class='{_e(cls)}'" if cls else "") + (f" title='{_e(title)}'" if title else "")
    return f"<img{extra} src='{_e(src)}' alt='{_e(alt)}'>"


def _thumbs(ds: RetrievalSet, indices: set[int], folder: Path) -> dict[int, str]:
    """Write each image's thumbnail; returns its URL relative to the page (the folder name percent-encoded)."""
    folder.mkdir(parents=True, exist_ok=True)
    names = {}
    for i, image in ds.images.iter_images(sorted(indices)):
        image.thumbnail((THUMB, THUMB))
        name = f"{i}.jpg"
        image.save(folder / name, quality=85)
        names[i] = quote(f"{folder.name}/{name}")
    return names


def _needed_images(examples: dict) -> set[int]:
    """Every image the page shows: image queries, text queries' results (both rankings) and right answers."""
    needed = {q["query"] for q in examples["image_queries"]}
    for q in examples["text_queries"]:
        needed |= set(q["results"]) | set(q.get("reranked", {}).get("results", []))
        if q["positive"] is not None:
            needed.add(q["positive"])
    return needed


def _missed(q: dict) -> bool:
    """The first result is not a positive, before or after re-ranking."""
    return q["hits"][:1] != [True] or ("reranked" in q and q["reranked"]["hits"][:1] != [True])


def _rank(q: dict, k: int) -> str:
    dual = "no positive in the set" if q["positive_rank"] is None else f"rank {q['positive_rank'] + 1}"
    if "reranked" not in q:
        return dual
    r = q["reranked"]["positive_rank"]
    return f"{dual}; ITM re-ranked: " + (f"not in the top {k}" if r is None else f"rank {r + 1}")


def _metrics_table(result: dict) -> list[str]:
    reranked = result.get("reranked")
    extra = f"<th>ITM re-ranked top {_e(reranked['k'])} (%)</th>" if reranked else ""
    again = {name: value for name, value, _ in metric_rows(reranked["metrics"], {})} if reranked else {}
    parts = [f"<table><tr><th>metric</th><th>value (%)</th>{extra}<th>chance (%)</th></tr>"]
    for name, value, chance in metric_rows(result["metrics"], result["chance"]):
        cell = f"<td>{'' if name not in again else f'{100 * again[name]:.2f}'}</td>" if reranked else ""
        parts.append(f"<tr><td>{_e(name)}</td><td>{100 * value:.2f}</td>{cell}"
                     f"<td>{'' if chance is None else f'{100 * chance:.2f}'}</td></tr>")
    return parts + ["</table>"]


def _captions(title: str, ranking: dict, texts: list[str]) -> str:
    items = "".join(f"<li class='{'hit' if hit else 'miss'}'>{'✓ ' if hit else ''}{_e(texts[t])}</li>"
                    for t, hit in zip(ranking["results"], ranking["hits"]))
    return f"<div class='ranking'><h3>{_e(title)}</h3><ol>{items}</ol></div>"


def _images(title: str, ranking: dict, thumbs: dict[int, str]) -> str:
    imgs = "".join(_img(thumbs[i], f"result {i}", "hit" if hit else "miss", "hit" if hit else "not a positive")
                   for i, hit in zip(ranking["results"], ranking["hits"]))
    return f"<div class='ranking'><h3>{_e(title)}</h3><div class='row'>{imgs}</div></div>"


def _image_query(q: dict, texts: list[str], thumbs: dict[int, str], k: int) -> str:
    lists = _captions("dual encoder", q, texts)
    if "reranked" in q:
        lists += _captions(f"ITM re-ranked (top {k})", q["reranked"], texts)
    answer = ""
    if _missed(q):
        caption = "" if q["positive"] is None else f"“{_e(texts[q['positive']])}”<br>"
        answer = f"<div class='answer'><b>right answer</b>: {caption}<small>{_e(_rank(q, k))}</small></div>"
    query = _img(thumbs[q["query"]], f"query image {q['query']}")
    return f"<div class='q'>{query}{lists}{answer}</div>"


def _text_query(q: dict, texts: list[str], text_to_image: list[int], thumbs: dict[int, str], k: int) -> str:
    lists = _images("dual encoder", q, thumbs)
    if "reranked" in q:
        lists += _images(f"ITM re-ranked (top {k})", q["reranked"], thumbs)
    answer = ""
    if _missed(q):
        answer = (f"<div class='answer'><b>right answer</b>: image {_e(q['positive'])}<br>"
                  f"{_img(thumbs[q['positive']], 'right answer ' + str(q['positive']))}<br>"
                  f"<small>{_e(_rank(q, k))}</small></div>")
    return (f"<div class='q'><div class='query'>{_e(texts[q['query']])}<br>"
            f"<small>(image {_e(text_to_image[q['query']])})</small></div>{lists}{answer}</div>")


def write_retrieval_html(path: str | Path, ds: RetrievalSet, result: dict, title: str) -> Path:
    """``path`` (HTML) and its thumbnail folder beside it; every image it shows is on disk."""
    path = Path(path)
    ex = result["examples"]
    thumbs = _thumbs(ds, _needed_images(ex), thumbs_dir(path))
    texts, text_to_image = ds.texts, ds.text_to_image
    k = result["reranked"]["k"] if "reranked" in result else 0
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{_e(title)}</h1>",
             f"<p>{_e(result['images'])} images, {_e(result['texts'])} captions. Source: {_e(ds.source)}</p>",
             *_metrics_table(result), "<h2>Image → text: top-5 captions</h2>"]
    parts += [_image_query(q, texts, thumbs, k) for q in ex["image_queries"]]
    parts.append("<h2>Text → image: top-5 images</h2>")
    parts += [_text_query(q, texts, text_to_image, thumbs, k) for q in ex["text_queries"]]
    parts.append("<p>Green border or ✓: a positive; red border: not a positive. Where the first result is wrong, "
                 "the right answer is shown with its rank (rank 1 = first; for an image, its best-ranked caption)."
                 "</p></body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path



def _failure(f: dict, texts: list[str], thumbs: dict[int, str], scorer: str) -> str:
    """One wrong test case: each image with its true caption and the best other caption, both scored."""
    rows = []
    for r in f["rows"]:
        won = "miss" if r["negative_score"] >= r["true_score"] else ""
        rows.append(f"<div class='row'>{_img(thumbs[r['image']], 'image ' + str(r['image']))}<div>"
                    f"<div class='hit'>✓ {_e(texts[r['true']])} <small>({r['true_score']:.4f})</small></div>"
                    f"<div class='{won}'>✗ {_e(texts[r['negative']])} <small>({r['negative_score']:.4f})</small>"
                    f"</div></div></div>")
    return (f"<div class='q'><div class='query'>{_e(f['category'])}<br><small>{_e(f['id'])} · {_e(scorer)}</small>"
            f"</div><div class='ranking'>{''.join(rows)}</div></div>")


def write_compositional_html(path: str | Path, ds, result: dict, table: str, title: str) -> Path:
    """``path`` (HTML) and its thumbnails: the metrics table, then per scorer the first failures of each category
    (``eval.compositional``): the image, its true caption and the caption that won (red) or came closest."""
    path = Path(path)
    scorers = result["scorers"]
    needed = {r["image"] for s in scorers.values() for f in s["failures"] for r in f["rows"]}
    thumbs = _thumbs(ds, needed, thumbs_dir(path))
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{_e(title)}</h1>",
             f"<p>{_e(result['items'])} test cases, {_e(result['images'])} images, {_e(result['texts'])} captions. "
             f"Files: {_e(', '.join(ds.files))}</p>", f"<pre>{_e(table)}</pre>"]
    for name, scored in scorers.items():
        parts.append(f"<h2>Failures by {_e(name)} scores</h2>")
        parts += [_failure(f, ds.texts, thumbs, name) for f in scored["failures"]] or ["<p>none</p>"]
    parts.append("<p>✓ the true caption of the image, ✗ the best other caption (red where it scored at least as "
                 "high: a tie counts as wrong); scores in brackets.</p></body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
