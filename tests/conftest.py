"""Shared fixtures: a seeded tiny model and a small shapes dataset built once per session."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import mmcontrast as mc  # noqa: E402
from data_prep.demo import build_demo  # noqa: E402


@pytest.fixture(scope="session")
def tiny():
    """(model, preprocess, tokenizer) of a seeded random ``tiny`` model in eval mode."""
    model = mc.create_model("tiny", seed=0).eval()
    _, preprocess = mc.make_transforms(model.preprocess_cfg)
    return model, preprocess, mc.make_tokenizer(model.model_cfg)


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory):
    """A small shapes dataset in the demo layout: 8 shards of 256 pairs plus benchmark sets."""
    out = tmp_path_factory.mktemp("demo")
    build_demo(out, seed=1, train_size=2048, retrieval_size=120, zeroshot_size=160, shard_size=256, workers=1)
    return out


@pytest.fixture(scope="session")
def real_retrieval(tmp_path_factory):
    """{format: annotation path} of the real-photo retrieval fixture (images under the same root)."""
    from .real_images import build_retrieval_fixture
    return build_retrieval_fixture(tmp_path_factory.mktemp("real"))


@pytest.fixture(scope="session")
def real_classification(tmp_path_factory):
    """{digits|lfw}_{folder|wds} → path of the real classification sets."""
    from .real_images import build_classification_fixture
    return build_classification_fixture(tmp_path_factory.mktemp("real_cls"))


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
