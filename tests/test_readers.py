"""Every reader yields the same images and captions from the same real-photo fixture."""

from __future__ import annotations

import numpy as np
import pytest

from eval.datasets import open_dataset
from eval.readers import read_blip, read_coco_captions, read_flickr_txt, read_imagefolder, read_karpathy, read_wds
from mmcontrast.errors import UserError

from .real_images import CAPTIONS


def _pixels(ds):
    return [np.asarray(im) for _, im in ds.images.iter_images(range(len(ds)))]


def _content(ds):
    return _pixels(ds), ds.captions


def test_all_retrieval_formats_agree(real_retrieval):
    root = real_retrieval["wds"].parent
    sets = {
        "karpathy_flickr": read_karpathy(real_retrieval["karpathy_flickr"], root),
        "karpathy_coco": read_karpathy(real_retrieval["karpathy_coco"], root),
        "coco": read_coco_captions(real_retrieval["coco"], root),
        "flickr_txt": read_flickr_txt(real_retrieval["flickr_txt"], root),
        "blip": read_blip(real_retrieval["blip"], root),
        "wds": read_wds(real_retrieval["wds"]),
    }
    ref_pixels, ref_captions = _content(sets["wds"])
    assert ref_captions == list(CAPTIONS.values())
    assert len(sets["wds"].texts) == sum(len(c) for c in CAPTIONS.values())
    for name, ds in sets.items():
        pixels, captions = _content(ds)
        assert captions == ref_captions, name
        assert len(pixels) == len(ref_pixels) == 15, name
        for a, b in zip(pixels, ref_pixels):
            assert np.array_equal(a, b), name


def test_classification_formats_agree(real_classification):
    for name in ("digits", "lfw"):
        folder = read_imagefolder(real_classification[f"{name}_folder"])
        wds = read_wds(real_classification[f"{name}_wds"])
        assert folder.labels == wds.labels and folder.classnames == wds.classnames
        assert folder.templates == wds.templates
        a, b = _pixels(folder), _pixels(wds)
        assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
    assert len(read_wds(real_classification["digits_wds"])) == 200


@pytest.mark.parametrize("keep, expected", [
    (["dataset_flickr30k.json"], "(karpathy)"),
    (["flickr30k_test_karpathy.txt"], "(flickr-txt)"),
    (["wds_flickr30k"], "(wds)"),
])
def test_flickr30k_detection_says_what_it_used(real_retrieval, tmp_path, keep, expected):
    root = real_retrieval["wds"].parent
    for f in ("flickr30k-images", *keep):
        (tmp_path / f).symlink_to(root / f)
    said = []
    ds = open_dataset("flickr30k", tmp_path, log=said.append)
    assert len(ds) == 15 and ds.name == "flickr30k"
    assert said and said[0].endswith(expected) and keep[0] in said[0]


def test_mscoco_detection_prefers_karpathy(real_retrieval):
    said = []
    ds = open_dataset("mscoco", real_retrieval["wds"].parent, log=said.append)
    assert "dataset_coco.json (karpathy)" in said[0] and len(ds) == 15


def test_missing_annotations_list_what_was_looked_for(tmp_path):
    with pytest.raises(UserError, match="no flickr30k annotations under .*dataset_flickr30k.json.*"
                                        "flickr30k_test_karpathy.txt"):
        open_dataset("flickr30k", tmp_path)


def test_missing_image_is_named(real_retrieval, tmp_path):
    (tmp_path / "dataset_flickr30k.json").write_text(real_retrieval["karpathy_flickr"].read_text())
    with pytest.raises(UserError, match="image not found; looked for .*astronaut.jpg"):
        open_dataset("flickr30k", tmp_path)


def test_karpathy_split_selection(real_retrieval):
    root = real_retrieval["wds"].parent
    assert len(read_karpathy(real_retrieval["karpathy_flickr"], root, "train")) == 1
    with pytest.raises(UserError, match="no images in split 'val'"):
        read_karpathy(real_retrieval["karpathy_flickr"], root, "val")


def test_first_captions(real_retrieval):
    ds = read_wds(real_retrieval["wds"]).first_captions(2)
    assert all(len(c) == 2 for c in ds.captions) and len(ds.texts) == 30


def test_wds_without_nshards_is_an_error(tmp_path):
    (tmp_path / "test").mkdir()
    with pytest.raises(UserError, match="nshards.txt is missing"):
        read_wds(tmp_path)
