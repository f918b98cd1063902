"""Our evaluators equal CLIP_benchmark's own functions on the same model and data."""

from __future__ import annotations

import io

import pytest
import torch
from clip_benchmark.metrics import zeroshot_classification as cb_cls
from clip_benchmark.metrics import zeroshot_retrieval as cb_ret
from sklearn.metrics import balanced_accuracy_score

from data_prep.writer import write_shard
from eval.datasets import iter_samples, open_wds
from eval.retrieval import run_retrieval
from eval.zeroshot import run_zeroshot


class _Set(torch.utils.data.Dataset):
    def __init__(self, items, classes=None):
        self.items, self.classes = items, classes

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _loader(ds, preprocess, collate=None):
    items = [(preprocess(image), target) for _, image, target in iter_samples(ds)]
    return torch.utils.data.DataLoader(_Set(items, ds.classnames), batch_size=32, collate_fn=collate)


def _unique_caption_set(src, out):
    """The demo retrieval set with every caption made unique: no exact ties, where CLIP_benchmark
    leaves the order to ``torch.topk`` and we use the stable rule (EVAL.md)."""
    samples = [{"__key__": key, "png": _png(image), "txt": "\n".join(f"{c} {i}" for c in captions)}
               for i, (key, image, captions) in enumerate(iter_samples(open_wds(src)))]
    (out / "test").mkdir(parents=True)
    write_shard(out / "test" / "0.tar", samples[:70])
    write_shard(out / "test" / "1.tar", samples[70:])
    (out / "test" / "nshards.txt").write_text("2\n")
    (out / "dataset_type.txt").write_text("retrieval\n")
    return open_wds(f"wds:{out}")


def _png(image):
    buf = io.BytesIO()
    image.save(buf, format="PNG")  # lossless: the same pixels as the source set
    return buf.getvalue()


def test_retrieval_equals_clip_benchmark(tiny, small_demo, tmp_path):
    model, preprocess, tokenizer = tiny
    ds = _unique_caption_set(small_demo / "retrieval", tmp_path / "flickr_like")
    ours = run_retrieval(model, preprocess, tokenizer, ds, batch_size=32, progress=False)["metrics"]

    def collate(batch):
        return torch.stack([b[0] for b in batch]), [b[1] for b in batch]

    ref = cb_ret.evaluate(model, _loader(ds, preprocess, collate), tokenizer, "cpu", amp=False,
                          recall_k_list=[1, 5, 10])
    assert ref.keys() <= ours.keys()
    for k, v in ref.items():
        assert ours[k] == pytest.approx(v, abs=1e-9), k


def test_zeroshot_equals_clip_benchmark(tiny, small_demo):
    model, preprocess, tokenizer = tiny
    ds = open_wds(small_demo / "zeroshot")
    ours = run_zeroshot(model, preprocess, tokenizer, ds, batch_size=32, progress=False)["metrics"]
    # CLIP_benchmark's `evaluate` = these two functions + its `accuracy`, which NumPy 2 breaks;
    # its logits with the metric definitions it uses give the reference numbers.
    classifier = cb_cls.zero_shot_classifier(model, tokenizer, ds.classnames, ds.templates, "cpu", amp=False)
    logits, target = cb_cls.run_classification(model, classifier, _loader(ds, preprocess), "cpu", amp=False)
    top5 = logits.topk(5, dim=1).indices
    assert ours["acc1"] == pytest.approx((logits.argmax(1) == target).float().mean().item(), abs=1e-9)
    assert ours["acc5"] == pytest.approx((top5 == target[:, None]).any(1).float().mean().item(), abs=1e-9)
    assert ours["mean_per_class_recall"] == pytest.approx(balanced_accuracy_score(target, logits.argmax(1)))
