"""Our evaluators equal CLIP_benchmark's own functions on the same model and the real-photo fixture."""

from __future__ import annotations

import pytest
import torch
from clip_benchmark.metrics import zeroshot_classification as cb_cls
from clip_benchmark.metrics import zeroshot_retrieval as cb_ret
from sklearn.metrics import balanced_accuracy_score

from eval.readers import read_imagefolder, read_karpathy, read_wds
from eval.retrieval import run_retrieval
from eval.zeroshot import run_zeroshot


class _Set(torch.utils.data.Dataset):
    def __init__(self, items, classes=None):
        self.items, self.classes = items, classes

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _loader(ds, targets, preprocess, collate=None):
    items = [(preprocess(im), t) for (_, im), t in zip(ds.images.iter_images(range(len(ds))), targets)]
    return torch.utils.data.DataLoader(_Set(items, getattr(ds, "classnames", None)), batch_size=4,
                                       collate_fn=collate)


@pytest.mark.parametrize("fmt", ["wds", "karpathy_flickr"])
def test_retrieval_equals_clip_benchmark(tiny, real_retrieval, fmt):
    model, preprocess, tokenizer = tiny
    ds = read_wds(real_retrieval["wds"]) if fmt == "wds" else \
        read_karpathy(real_retrieval[fmt], real_retrieval["wds"].parent)
    ours = run_retrieval(model, preprocess, tokenizer, ds, batch_size=4, progress=False)["metrics"]

    def collate(batch):
        return torch.stack([b[0] for b in batch]), [b[1] for b in batch]

    ref = cb_ret.evaluate(model, _loader(ds, ds.captions, preprocess, collate), tokenizer, "cpu", amp=False,
                          recall_k_list=[1, 5, 10])
    assert ref.keys() <= ours.keys()
    for k, v in ref.items():
        assert ours[k] == pytest.approx(v, abs=1e-6), k


@pytest.mark.parametrize("name", ["digits_wds", "lfw_folder"])
def test_zeroshot_equals_clip_benchmark(tiny, real_classification, name):
    model, preprocess, tokenizer = tiny
    path = real_classification[name]
    ds = read_wds(path) if name.endswith("wds") else read_imagefolder(path)
    ours = run_zeroshot(model, preprocess, tokenizer, ds, batch_size=16, progress=False)["metrics"]
    # CLIP_benchmark's `evaluate` = these two functions + its `accuracy`, which NumPy 2 breaks
    # (float() of a 1-element array); its logits with its metric definitions give the reference.
    classifier = cb_cls.zero_shot_classifier(model, tokenizer, ds.classnames, ds.templates, "cpu", amp=False)
    logits, target = cb_cls.run_classification(model, classifier, _loader(ds, ds.labels, preprocess), "cpu",
                                               amp=False)
    assert ours["acc1"] == pytest.approx((logits.argmax(1) == target).float().mean().item(), abs=1e-6)
    if len(ds.classnames) >= 5:
        top5 = logits.topk(5, dim=1).indices
        assert ours["acc5"] == pytest.approx((top5 == target[:, None]).any(1).float().mean().item(), abs=1e-6)
    assert ours["mean_per_class_recall"] == pytest.approx(balanced_accuracy_score(target, logits.argmax(1)),
                                                          abs=1e-6)


def test_faiss_flat_backend_equals_torch_on_real_photos(tiny, real_retrieval):
    model, preprocess, tokenizer = tiny
    ds = read_wds(real_retrieval["wds"])
    exact = run_retrieval(model, preprocess, tokenizer, ds, batch_size=8, progress=False)["metrics"]
    flat = run_retrieval(model, preprocess, tokenizer, ds, batch_size=8, progress=False, backend="faiss-flat")
    assert flat["metrics"].pop("approximate") == 0.0
    for k, v in exact.items():
        assert flat["metrics"][k] == pytest.approx(v, abs=1e-4), k
