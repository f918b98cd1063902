"""The class names and prompt templates CLIP_benchmark gives each dataset, read from the installed packages.

The rules are those of clip_benchmark's ``datasets/builder.py`` (``build_dataset`` and ``build_vtab_dataset``):

- class names: ``datasets/en_classnames.json[key]`` replaces the reader's names for the datasets in ``EN_NAMES``;
  ImageNet-A/-R/-O get the ``imagenet1k`` names masked to their wnids (``all_imagenet_wordnet_ids`` and the
  subset lists, parsed from ``builder.py``'s source: the package cannot be imported without ``requests``);
  Food-101 and SUN397 rewrite the reader's names (``_`` → space; SUN397 also ``/`` → space); every other
  dataset keeps the reader's (torchvision's) names.
- templates: ``datasets/en_zeroshot_classification_templates.json`` by dataset key (``vtab/x`` also tries
  ``x``), else ``imagenet1k``'s (the 80 OpenAI templates, = open_clip's ``OPENAI_IMAGENET_TEMPLATES``). A reader
  that brings its own templates (a CLIP_benchmark webdataset) keeps them, as the builder keeps a ``wds/`` set's.

User overrides: ``--classnames FILE`` (one name per line, as many as the set's classes) and ``--templates
openai|simple|cupl|FILE``; ``cupl`` is CLIP_benchmark's ``datasets/cupl_prompts.json`` (class-specific prompts of
Pratt et al. 2023, "What does a platypus look like?", for ImageNet-1k's classes), looked up by the same keys
as the templates, as ``--custom_template_file cupl_prompts.json`` does.
"""

from __future__ import annotations

import ast
import importlib.resources
import json
from dataclasses import replace
from functools import cache
from pathlib import Path

from mmcontrast.errors import UserError
from mmcontrast.templates import OPENAI_IMAGENET, SIMPLE

from ..readers import read_classnames, read_templates
from ..sets import ClassificationSet, check_classification

TEMPLATE_SETS = ("openai", "simple", "cupl")
DEFAULT_TEMPLATES = "imagenet1k"  # build_dataset's default_dataset_for_templates
MAX_PACKAGE_FILE = 64 << 20       # en_classnames.json is 60 kB, cupl_prompts.json 2 MB, builder.py 90 kB

# dataset → the en_classnames.json key build_dataset (or, for vtab/, build_vtab_dataset) replaces its names with
EN_NAMES = {
    "imagenet1k": "imagenet1k", "imagenet1k-unverified": "imagenet1k", "imagenetv2": "imagenet1k",
    "imagenet_sketch": "imagenet1k", "caltech101": "caltech101", "flowers": "flowers", "mnist": "mnist",
    "eurosat": "eurosat", "gtsrb": "gtsrb", "country211": "country211", "pcam": "pcam", "fer2013": "fer2013",
    "vtab/caltech101": "caltech101_vtab", "vtab/clevr_count_all": "clevr_count_all",
    "vtab/clevr_closest_object_distance": "clevr_closest_object_distance",
    "vtab/diabetic_retinopathy": "diabetic_retinopathy", "vtab/dmlab": "dmlab", "vtab/eurosat": "eurosat",
    "vtab/kitti_closest_vehicle_distance": "kitti_closest_vehicle_distance", "vtab/pets": "pets",
    "vtab/pcam": "pcam", "vtab/svhn": "svhn",
}
# dataset → the builder.py list of the ImageNet wnids it keeps
IMAGENET_SUBSETS = {"imagenet-a": "imagenet_a_wnids", "imagenet-r": "imagenet_r_wnids",
                    "imagenet-o": "imagenet_o_wnids"}
# CLIP_benchmark has these only under vtab/, cut from the same files' test split: named as there
VTAB_ONLY = {"svhn": "vtab/svhn", "resisc45": "vtab/resisc45"}


def _rename(name: str, classes: list[str]) -> list[str]:
    """The reader's names as build_dataset rewrites them ("to delimit words")."""
    if name == "food101":
        return [c.replace("_", " ") for c in classes]
    if name == "sun397":
        return [c.replace("_", " ").replace("/", " ") for c in classes]
    return list(classes)


def _package_text(package: str, rel: str) -> str:
    path = importlib.resources.files(package).joinpath(rel)
    try:
        with path.open("rb") as f:
            data = f.read(MAX_PACKAGE_FILE + 1)
        if len(data) > MAX_PACKAGE_FILE:
            raise ValueError(f"above {MAX_PACKAGE_FILE:,} bytes")
        return data.decode("utf-8")
    except (OSError, ValueError) as e:
        raise UserError(f"{package}'s {rel} cannot be read ({e}); reinstall {package}") from None


@cache
def package_json(rel: str) -> dict:
    """A JSON object shipped in clip_benchmark (``datasets/en_classnames.json``, ...)."""
    try:
        data = json.loads(_package_text("clip_benchmark", rel))
    except json.JSONDecodeError as e:
        raise UserError(f"clip_benchmark's {rel} is not JSON ({e}); reinstall clip-benchmark") from None
    if not isinstance(data, dict):
        raise UserError(f"clip_benchmark's {rel} is not a JSON object; reinstall clip-benchmark")
    return data


def en_classnames() -> dict[str, list[str]]:
    return package_json("datasets/en_classnames.json")


def en_templates() -> dict[str, list[str]]:
    return package_json("datasets/en_zeroshot_classification_templates.json")


@cache
def builder_lists() -> dict[str, list[str]]:
    """The wnid lists assigned in clip_benchmark's ``datasets/builder.py``, read as literals from its source."""
    rel = "datasets/builder.py"
    wanted = {"all_imagenet_wordnet_ids", *IMAGENET_SUBSETS.values()}
    found = {}
    for node in ast.walk(ast.parse(_package_text("clip_benchmark", rel))):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                and node.targets[0].id in wanted:
            value = ast.literal_eval(node.value)  # a list or set literal of strings; anything else raises
            found[node.targets[0].id] = sorted(value) if isinstance(value, set) else list(value)
    if found.keys() != wanted:
        raise UserError(f"clip_benchmark's {rel} lacks {', '.join(sorted(wanted - found.keys()))}: this version "
                        "of clip-benchmark is not one these rules were read from")
    return found


def lookup_keys(name: str) -> list[str]:
    """The keys build_dataset tries in a template (or class-name) file: the name, then ``x`` for ``vtab/x``."""
    prefix, _, rest = name.partition("/")
    return [name, rest] if prefix in ("tfds", "vtab", "wds") and rest else [name]


def first_found(table: dict, keys: list[str]):
    return next((table[k] for k in keys if k in table), None)


def clip_benchmark_classnames(name: str, reader_names: list[str]) -> tuple[list[str], str]:
    """(the class names CLIP_benchmark gives dataset ``name`` whose reader named its classes ``reader_names``,
    where they come from)."""
    rule = VTAB_ONLY.get(name, name)
    if rule in EN_NAMES:
        key = EN_NAMES[rule]
        return list(en_classnames()[key]), f"clip_benchmark's en_classnames.json[{key!r}]"
    if name in IMAGENET_SUBSETS:
        lists = builder_lists()
        keep = set(lists[IMAGENET_SUBSETS[name]])
        names = [c for c, w in zip(en_classnames()["imagenet1k"], lists["all_imagenet_wordnet_ids"]) if w in keep]
        return names, f"clip_benchmark's en_classnames.json['imagenet1k'] masked to {name}'s wnids"
    return _rename(name, reader_names), "the dataset's files"


def clip_benchmark_templates(name: str) -> list[str]:
    return list(first_found(en_templates(), lookup_keys(name) + [DEFAULT_TEMPLATES]))


def attach(ds: ClassificationSet, name: str) -> ClassificationSet:
    """``ds`` with the class names and templates CLIP_benchmark uses for dataset ``name``; one line when its
    names are not as many as the set's classes."""
    names, source = clip_benchmark_classnames(name, ds.classnames)
    if len(names) != len(ds.classnames):
        raise UserError(f"{ds.source}: {len(ds.classnames):,} classes, but {source} has {len(names):,} names for "
                        f"{name}; is this a complete copy of {name}?")
    templates = ds.templates or clip_benchmark_templates(name)
    return replace(ds, classnames=names, templates=templates)


def with_classnames(ds: ClassificationSet, path: str | Path) -> ClassificationSet:
    """``ds`` with the class names of ``path`` (one per line, in label order; as many as the set's classes)."""
    names = read_classnames(path)
    if len(names) != len(ds.classnames):
        raise UserError(f"--classnames {path}: {len(names):,} class names, but {ds.name} has {len(ds.classnames):,} "
                        "classes; the labels index the set's own classes, in its order")
    return check_classification(replace(ds, classnames=names), str(path))


def choose_templates(spec: str | None, ds: ClassificationSet) -> list[str] | dict[str, list[str]]:
    """The prompts for ``--templates spec``: the set's own (None), ``openai`` (80), ``simple`` (7), ``cupl``
    (CLIP_benchmark's class-specific prompts), or a file (one ``{c}`` template per line, or a CuPL JSON)."""
    if spec is None:
        return ds.templates
    if spec == "openai":
        return list(OPENAI_IMAGENET)
    if spec == "simple":
        return list(SIMPLE)
    if spec == "cupl":
        return cupl_prompts(ds)
    if not Path(spec).is_file():
        raise UserError(f"--templates {spec}: not {'/'.join(TEMPLATE_SETS)} and no such file")
    return read_templates(spec)


def cupl_prompts(ds: ClassificationSet) -> dict[str, list[str]]:
    """CLIP_benchmark's CuPL prompts for ``ds``'s classes; one line naming a class that has none."""
    table = package_json("datasets/cupl_prompts.json")
    prompts = first_found(table, lookup_keys(ds.name) + [DEFAULT_TEMPLATES])
    missing = [c for c in ds.classnames if not isinstance(prompts, dict) or c not in prompts]
    if missing:
        raise UserError(f"--templates cupl: clip_benchmark's cupl_prompts.json has prompts for "
                        f"{', '.join(table)}'s classes; {ds.name}'s class {missing[0][:60]!r} has none "
                        f"({len(missing):,} of {len(ds.classnames):,} classes)")
    return {c: list(prompts[c]) for c in ds.classnames}


def apply_overrides(ds: ClassificationSet, classnames: str | Path | None = None,
                    templates: str | None = None) -> ClassificationSet:
    """``ds`` with the user's ``--classnames`` file and ``--templates`` choice, when given."""
    if classnames:
        ds = with_classnames(ds, classnames)
    if templates:
        ds = replace(ds, templates=choose_templates(str(templates), ds))
    return ds
