"""Zero-shot class weights come from the embedding cache on a second run: no text is encoded, the metrics are
bit-identical, and a changed template, class name or model, or a broken entry, computes them again."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

import mmcontrast as mc
from eval.cache import EmbeddingCache
from eval.sets import ClassificationSet, FileImages
from eval.zeroshot import class_weights_key, run_zeroshot
from mmcontrast.errors import UserError

CLASSES = ["red", "green", "blue"]
TEMPLATES = ["a photo of {c}.", "a {c} thing."]


class Counting(torch.nn.Module):
    """The model, counting its ``encode_text`` and ``encode_image`` calls."""

    def __init__(self, model):
        super().__init__()
        self.model, self.text_calls, self.image_calls = model, 0, 0

    def encode_text(self, tokens):
        self.text_calls += 1
        return self.model.encode_text(tokens)

    def encode_image(self, pixels):
        self.image_calls += 1
        return self.model.encode_image(pixels)


class Recording:
    """The tokenizer, recording every text it is given."""

    def __init__(self, tokenizer):
        self.tokenizer, self.texts = tokenizer, []

    def __call__(self, texts):
        self.texts += list(texts)
        return self.tokenizer(texts)


@pytest.fixture
def ds(tmp_path):
    """Six 32-px noisy images tinted red, green or blue, two per class."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(6):
        pixels = rng.integers(0, 96, (32, 32, 3), dtype=np.uint8)
        pixels[..., i % 3] += 150
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(pixels).save(paths[-1])
    return ClassificationSet("tinted", str(tmp_path), FileImages(paths), [i % 3 for i in range(6)], CLASSES,
                             TEMPLATES)


@pytest.fixture
def counted(tiny):
    model, preprocess, tokenizer = tiny
    return Counting(model), preprocess, Recording(tokenizer)


def _run(counted, ds, cache, key="set", **kwargs):
    model, preprocess, tokenizer = counted
    model.text_calls = model.image_calls = 0
    tokenizer.texts = []
    return run_zeroshot(model, preprocess, tokenizer, ds, batch_size=4, cache=cache, cache_key=key, progress=False,
                        **kwargs)


def _prompts(classes, templates):
    return [t.format(c=c) for c in classes for t in templates]


def test_a_second_run_encodes_no_text_and_gives_bit_identical_metrics(counted, ds, tmp_path, tiny):
    cache = EmbeddingCache(tmp_path / "cache")
    first = _run(counted, ds, cache)
    assert counted[0].text_calls == 1 and counted[2].texts == _prompts(CLASSES, TEMPLATES)
    entries = sorted(p.name for p in (tmp_path / "cache").iterdir())
    weights_entry = f"{class_weights_key('set', CLASSES, [_prompts([c], TEMPLATES) for c in CLASSES])}.safetensors"
    assert entries == sorted(["set-images.safetensors", weights_entry])
    second = _run(counted, ds, cache)
    assert counted[0].text_calls == 0 and counted[0].image_calls == 0 and counted[2].texts == []
    assert second == first  # every metric, per-class recall and prediction, to the bit
    model, preprocess, tokenizer = tiny
    uncached = run_zeroshot(model, preprocess, tokenizer, ds, batch_size=4, progress=False)
    assert uncached == first
    cached = EmbeddingCache(tmp_path / "cache").get_or_compute(weights_entry.removesuffix(".safetensors"),
                                                                lambda: 1 / 0, log=lambda *a: None)
    assert torch.equal(cached, mc.build_class_weights(model, tokenizer, CLASSES, TEMPLATES))


def test_a_changed_template_or_class_name_encodes_exactly_the_new_prompts(counted, ds, tmp_path):
    cache = EmbeddingCache(tmp_path / "cache")
    first = _run(counted, ds, cache)
    _run(counted, ds, cache, templates=["a photo of {c}.", "a {c} object."])
    assert counted[2].texts == _prompts(CLASSES, ["a photo of {c}.", "a {c} object."])
    renamed = dataclasses.replace(ds, classnames=["red", "green", "navy"])
    renamed_result = _run(counted, renamed, cache)
    assert counted[2].texts == _prompts(renamed.classnames, TEMPLATES) and counted[0].image_calls == 0
    assert renamed_result == _run(counted, renamed, None)  # the new names' weights, not the old ones'
    assert _run(counted, ds, cache) == first and counted[0].text_calls == 0  # the first entries are still there
    # a callable template that formats the same prompts is the same entry: the key is what the prompts say
    assert _run(counted, ds, cache, templates=[lambda c: f"a photo of {c}.", lambda c: f"a {c} thing."]) == first
    assert counted[0].text_calls == 0


def test_the_weights_are_shared_by_sets_of_one_model_and_not_across_models(counted, ds, tmp_path):
    cache = EmbeddingCache(tmp_path / "cache")
    first = _run(counted, ds, cache, key="set-a", model_key="model-1")
    other = _run(counted, ds, cache, key="set-b", model_key="model-1")  # another set, same classes and prompts
    assert counted[0].text_calls == 0 and counted[0].image_calls > 0 and other == first
    _run(counted, ds, cache, key="set-b", model_key="model-2")
    assert counted[0].text_calls == 1 and counted[0].image_calls == 0
    _run(counted, ds, cache, key="set-c")  # no model key: keyed by the set's key, so computed again
    assert counted[0].text_calls == 1


def test_a_disabled_cache_is_never_read_or_written(counted, ds, tmp_path):
    for cache, key in [(EmbeddingCache(None), "set"), (EmbeddingCache(tmp_path / "cache"), "")]:
        for _ in range(2):
            _run(counted, ds, cache, key=key)
            assert counted[0].text_calls == 1 and counted[0].image_calls > 0
    assert not (tmp_path / "cache").exists()


def test_only_the_writer_writes_and_every_process_reads(counted, ds, tmp_path):
    reader = EmbeddingCache(tmp_path / "cache", writer=False)
    first = _run(counted, ds, reader)
    assert counted[0].text_calls == 1 and not (tmp_path / "cache").exists()
    _run(counted, ds, EmbeddingCache(tmp_path / "cache"))
    assert _run(counted, ds, reader) == first and counted[0].text_calls == 0 and counted[0].image_calls == 0


def _weights_entry(tmp_path):
    (entry,) = (tmp_path / "cache").glob("*-class-weights.safetensors")
    return entry


def test_a_broken_weights_entry_is_recomputed_with_a_line_saying_why(counted, ds, tmp_path, capsys):
    cache = EmbeddingCache(tmp_path / "cache")
    first = _run(counted, ds, cache)
    entry = _weights_entry(tmp_path)
    whole = entry.read_bytes()
    changed = bytearray(whole)
    changed[-1] ^= 1
    capsys.readouterr()
    for broken, why in [(whole[:-7], f"truncated safetensors file: {entry} holds "),
                        (bytes(changed), f"{entry} does not match the blake2b hash it records")]:
        entry.write_bytes(broken)
        assert _run(counted, ds, cache) == first and counted[0].text_calls == 1
        assert f"embedding cache entry is broken, recomputing it: {why}" in capsys.readouterr().out
        assert entry.read_bytes() == whole  # written again, as it was


def test_a_sound_entry_of_another_shape_is_recomputed(counted, ds, tmp_path, capsys):
    cache = EmbeddingCache(tmp_path / "cache")
    first = _run(counted, ds, cache)
    entry = _weights_entry(tmp_path)
    whole = entry.read_bytes()
    dim = counted[0].model.encode_text(counted[2](["x"])).shape[1]
    entry.unlink()
    cache.get_or_compute(entry.name.removesuffix(".safetensors"), lambda: torch.zeros(dim, 2))  # another set's
    capsys.readouterr()
    assert _run(counted, ds, cache) == first and counted[0].text_calls == 1
    assert (f"embedding cache entry is broken, recomputing it: {entry} holds features of shape [{dim}, 2], "
            f"not [{dim}, 3]") in capsys.readouterr().out
    assert entry.read_bytes() == whole


def test_cached_weights_are_checked_for_nan_like_computed_ones(counted, ds, tmp_path):
    cache = EmbeddingCache(tmp_path / "cache")
    _run(counted, ds, cache)
    entry = _weights_entry(tmp_path)
    weights = cache.get_or_compute(entry.name.removesuffix(".safetensors"), lambda: 1 / 0, log=lambda *a: None)
    weights[:, 1] = float("nan")
    entry.unlink()
    cache.get_or_compute(entry.name.removesuffix(".safetensors"), lambda: weights)  # sound file, NaN inside
    with pytest.raises(UserError, match="the model's class weights \\(from its text features\\) hold NaN or inf "
                                        "for 1 of 3 classes"):
        _run(counted, ds, cache)
