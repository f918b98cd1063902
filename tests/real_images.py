"""A real-image benchmark fixture from photos that ship inside PyPI wheels (offline), in every format.

Fifteen photos from scikit-image, scikit-learn and matplotlib with hand-written captions (2–3 each),
written as a Karpathy Flickr JSON, a Karpathy COCO JSON, a COCO captions JSON, CLIP_benchmark's
Flickr txt, a BLIP/ALBEF list and a CLIP_benchmark webdataset directory; and two real classification
sets (scikit-learn digits, scikit-image ``lfw_subset``) as ImageFolder trees and webdatasets.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from data_prep.writer import write_benchmark

CAPTIONS = {
    "astronaut": ["an astronaut in a white space suit posing in front of a flag",
                  "portrait of a smiling female astronaut", "a woman astronaut holding her helmet"],
    "coffee": ["a cup of coffee on a saucer with a spoon", "a white coffee cup seen from above"],
    "chelsea": ["an orange tabby cat looking to the side", "a close-up of a ginger cat"],
    "rocket": ["a rocket on the launch pad against a blue sky", "a space shuttle ready for launch"],
    "hubble_deep_field": ["a field of distant galaxies in deep space",
                          "a telescope image full of tiny galaxies"],
    "immunohistochemistry": ["a microscope image of stained tissue",
                             "cells stained brown and blue under a microscope"],
    "retina": ["a photograph of the back of a human eye", "a retina with red blood vessels"],
    "coins": ["old coins arranged in rows", "a grayscale photo of many coins", "a collection of coins"],
    "camera": ["a man with a camera on a tripod", "a black and white photo of a photographer"],
    "moon": ["the surface of the moon with craters", "a grayscale picture of lunar craters"],
    "stereo_motorcycle": ["a red motorcycle parked indoors", "a motorbike in a room"],
    "colorwheel": ["a colour wheel with all the hues", "a circle of rainbow colours"],
    "china": ["a chinese temple with a curved roof", "a traditional building among trees"],
    "flower": ["a pink flower close up", "a flower with a yellow centre"],
    "grace_hopper": ["a portrait of a woman in a navy uniform", "an officer in uniform smiling"],
}


def load_photos() -> dict[str, Image.Image]:
    import skimage.data
    from matplotlib import cbook
    from sklearn.datasets import load_sample_images

    photos = {}
    for name in CAPTIONS:
        if name in ("china", "flower"):
            continue
        if name == "grace_hopper":
            with cbook.get_sample_data("grace_hopper.jpg") as f:
                photos[name] = Image.open(f).convert("RGB")
            continue
        array = getattr(skimage.data, name)()
        array = array[0] if isinstance(array, tuple) else array      # stereo pair: the left view
        photos[name] = Image.fromarray(np.asarray(array)).convert("RGB")
    sample = load_sample_images()
    for fname, image in zip(sample.filenames, sample.images):
        photos[Path(fname).stem] = Image.fromarray(image)
    return {name: photos[name] for name in CAPTIONS}


def _jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def build_retrieval_fixture(root: Path) -> dict[str, Path]:
    """Write the photos and every annotation format under ``root``; returns {format: annotation path}."""
    photos = load_photos()
    names = list(CAPTIONS)
    for folder in ("flickr30k-images", "val2014"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    data = {name: _jpeg(photos[name].resize((256, 256 * photos[name].height // photos[name].width)))
            for name in names}
    coco_name = {name: f"COCO_val2014_{i + 1:012d}.jpg" for i, name in enumerate(names)}
    for name in names:
        (root / "flickr30k-images" / f"{name}.jpg").write_bytes(data[name])
        (root / "val2014" / coco_name[name]).write_bytes(data[name])
    sent = 0
    flickr_images, coco_images, coco_anns, blip, txt = [], [], [], [], ["image,caption"]
    for i, name in enumerate(names):
        sentences = []
        for c in CAPTIONS[name]:
            sentences.append({"raw": c, "tokens": c.split(), "imgid": i, "sentid": sent})
            coco_anns.append({"id": sent, "image_id": i + 1, "caption": c})
            txt.append(f"{name}.jpg,{c}")
            sent += 1
        entry = {"filename": f"{name}.jpg", "imgid": i, "split": "test", "sentences": sentences,
                 "sentids": [s["sentid"] for s in sentences]}
        flickr_images.append(entry)
        coco_images.append({**entry, "filepath": "val2014", "filename": coco_name[name], "cocoid": i + 1})
        blip.append({"image": f"val2014/{coco_name[name]}", "caption": CAPTIONS[name]})
    # a training image that the test split must leave out
    flickr_images.append({**flickr_images[0], "imgid": 99, "split": "train"})
    paths = {
        "karpathy_flickr": root / "dataset_flickr30k.json",
        "karpathy_coco": root / "dataset_coco.json",
        "coco": root / "coco_test_karpathy.json",
        "flickr_txt": root / "flickr30k_test_karpathy.txt",
        "blip": root / "coco_karpathy_test.json",
        "wds": root / "wds_flickr30k",
    }
    paths["karpathy_flickr"].write_text(json.dumps({"dataset": "flickr30k", "images": flickr_images}))
    paths["karpathy_coco"].write_text(json.dumps({"dataset": "coco", "images": coco_images}))
    paths["coco"].write_text(json.dumps({"images": [{"id": i + 1, "file_name": coco_name[n]}
                                                    for i, n in enumerate(names)], "annotations": coco_anns}))
    paths["flickr_txt"].write_text("\n".join(txt) + "\n")
    paths["blip"].write_text(json.dumps(blip))
    samples = [{"__key__": f"s{i:07d}", "jpg": data[n], "txt": "\n".join(CAPTIONS[n])} for i, n in enumerate(names)]
    write_benchmark(paths["wds"], samples, 8, dataset_type="retrieval")
    return paths


def build_classification_fixture(root: Path) -> dict[str, Path]:
    """Digits (10 classes, 200 images, upscaled 8→32 px) and LFW faces vs non-faces, two layouts each."""
    import skimage.data
    from sklearn.datasets import load_digits

    digits = load_digits()
    lfw = skimage.data.lfw_subset()  # 100 faces then 100 non-faces
    sets = {
        "digits": ([f"the number {w}" for w in ["zero", "one", "two", "three", "four", "five", "six", "seven",
                                               "eight", "nine"]],
                   [Image.fromarray((255 - im * 16).clip(0, 255).astype(np.uint8)).resize((32, 32), Image.NEAREST)
                    for im in digits.images[:200]], list(digits.target[:200])),
        "lfw": (["a human face", "a background patch"],
                [Image.fromarray((im * 255).astype(np.uint8)) for im in lfw], [0] * 100 + [1] * 100),
    }
    templates = ["a photo of {c}.", "an image of {c}."]
    out = {}
    for name, (classnames, images, labels) in sets.items():
        folder = root / f"{name}_folder"
        for c in range(len(classnames)):
            (folder / f"class_{c}").mkdir(parents=True, exist_ok=True)
        pngs = []
        for i, (im, label) in enumerate(zip(images, labels)):
            buf = io.BytesIO()
            im.convert("RGB").save(buf, format="PNG")
            pngs.append(buf.getvalue())
            (folder / f"class_{label}" / f"{i:04d}.png").write_bytes(pngs[-1])
        (folder / "classnames.txt").write_text("\n".join(classnames) + "\n")
        (folder / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")
        # the webdataset in ImageFolder order (sorted by class folder, then file name)
        order = sorted(range(len(labels)), key=lambda i: (labels[i], i))
        samples = [{"__key__": f"s{j:07d}", "png": pngs[i], "cls": str(labels[i])} for j, i in enumerate(order)]
        out[f"{name}_folder"] = folder
        out[f"{name}_wds"] = write_benchmark(root / f"wds_{name}", samples, 64, classnames=classnames,
                                             templates=templates)
    return out
