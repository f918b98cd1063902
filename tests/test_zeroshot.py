"""Zero-shot classification: our class weights and logits equal open_clip's; metrics equal CLIP_benchmark's."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from open_clip import build_zero_shot_classifier
from open_clip.zero_shot_metadata import SIMPLE_IMAGENET_TEMPLATES
from PIL import Image
from sklearn.metrics import accuracy_score, balanced_accuracy_score, top_k_accuracy_score

import mmcontrast as mc
from mmcontrast.metrics import classification_metrics

CLASSES = ["red circle", "blue square", "green triangle", "yellow star", "black cross", "white ring"]


def _images(n=5):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)) for _ in range(n)]


def test_class_weights_equal_open_clip(tiny):
    model, _, tokenizer = tiny
    ours = mc.build_class_weights(model, tokenizer, CLASSES, mc.templates.SIMPLE)
    ref = build_zero_shot_classifier(model, tokenizer, CLASSES, SIMPLE_IMAGENET_TEMPLATES)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


def test_classifier_logits_equal_open_clip(tiny):
    model, preprocess, tokenizer = tiny
    clf = mc.ZeroShotClassifier(model, tokenizer, preprocess, CLASSES, mc.templates.OPENAI_IMAGENET)
    images = _images()
    ref_w = build_zero_shot_classifier(model, tokenizer, CLASSES, [lambda c, t=t: t.format(c=c)
                                                                    for t in mc.templates.OPENAI_IMAGENET])
    with torch.no_grad():
        feats = F.normalize(model.encode_image(torch.stack([preprocess(im) for im in images])), dim=-1)
    torch.testing.assert_close(clf.logits(images), 100.0 * feats @ ref_w, atol=1e-4, rtol=0)
    proba = clf.predict_proba(images)
    torch.testing.assert_close(proba.sum(dim=1), torch.ones(len(images)))
    assert clf.predict(images) == [CLASSES[i] for i in proba.argmax(dim=1).tolist()]


def test_one_image_gives_one_label_and_one_row(tiny):
    model, preprocess, tokenizer = tiny
    clf = mc.ZeroShotClassifier(model, tokenizer, preprocess, CLASSES, mc.templates.SIMPLE)
    images = _images(3)
    labels, proba = clf.predict(images), clf.predict_proba(images)
    assert isinstance(labels, list) and len(labels) == 3 and proba.shape == (3, len(CLASSES))
    for i, image in enumerate(images):
        label, row = clf.predict(image), clf.predict_proba(image)
        assert isinstance(label, str) and label == labels[i]
        assert row.shape == (len(CLASSES),)
        torch.testing.assert_close(row, proba[i], atol=1e-6, rtol=0)
        torch.testing.assert_close(clf.predict_proba(preprocess(image)), proba[i], atol=1e-6, rtol=0)  # [3, H, W]
    assert clf.predict(torch.stack([preprocess(im) for im in images])) == labels  # [N, 3, H, W]


def test_templates_are_the_openai_sets():
    assert len(mc.templates.OPENAI_IMAGENET) == 80 and len(mc.templates.SIMPLE) == 7
    assert mc.templates.OPENAI_IMAGENET[0] == "a bad photo of a {c}."


def test_cupl_prompts_per_class(tiny):
    model, _, tokenizer = tiny
    prompts = {c: [f"a photo of a {c}.", f"a {c}, drawn"] for c in CLASSES}
    w = mc.build_class_weights(model, tokenizer, CLASSES, prompts)
    same = mc.build_class_weights(model, tokenizer, CLASSES, ["a photo of a {c}.", "a {c}, drawn"])
    torch.testing.assert_close(w, same)
    with pytest.raises(ValueError, match="no prompts"):
        mc.build_class_weights(model, tokenizer, CLASSES, {"red circle": ["x"]})


def test_metrics_equal_clip_benchmark():
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(300, 7, generator=g), torch.randint(0, 7, (300,), generator=g)
    ours = classification_metrics(logits, target)
    # CLIP_benchmark computes acc1/acc5 with its own `accuracy`, which fails under NumPy 2
    # (float() of a 1-element array); scikit-learn's definitions are the same.
    assert ours["acc1"] == pytest.approx(accuracy_score(target, logits.argmax(1)))
    assert ours["acc5"] == pytest.approx(top_k_accuracy_score(target, logits, k=5, labels=range(7)))
    assert ours["mean_per_class_recall"] == pytest.approx(balanced_accuracy_score(target, logits.argmax(1)))
    assert math.isnan(classification_metrics(logits[:, :4], target % 4)["acc5"])
