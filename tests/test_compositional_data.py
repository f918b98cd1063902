"""The shapes scenes, their oracle, the compositional set (SugarCrepe / Winoground layouts) and the demo options."""

from __future__ import annotations

import hashlib
import json
import math
import tarfile
from collections import Counter, defaultdict

import numpy as np
import pytest

from data_prep import scenes
from data_prep.__main__ import main
from data_prep.compositional import CATEGORIES, generate, write_compositional
from data_prep.demo import build_demo
from data_prep.scene_edits import ADDED, EDITS, MIRRORED, edit_of
from data_prep.scenes import NP, Caption, Obj, Scene, holds, parse
from mmcontrast.errors import UserError

SIZE = 40  # items per category: 280 items, 280 images, 40 Winoground groups


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("compositional") / "set"
    manifest = write_compositional(out, seed=5, size=SIZE)
    items = {c: json.loads((out / f"{c}.json").read_text()) for c in CATEGORIES}
    return out, manifest, items, json.loads((out / "scenes.json").read_text())


def _two_objects() -> Scene:
    return Scene((Obj("circle", "red", "small", 0.26, 0.26), Obj("square", "orange", "large", 0.74, 0.27)), "plain")


def test_grammar_round_trips_and_refuses_other_strings():
    caption = Caption(NP("circle", "red", "small"), "to the left of", NP("square", "orange"), NP("star"))
    assert caption.text() == "a small red circle to the left of an orange square and a star"
    assert parse(caption.text()) == caption
    for bad in ("a red circle near a square", "a circle to the left of", "the red circle above a square",
                "a orange circle above a square", "a circle above a square and"):
        with pytest.raises(ValueError, match="scene grammar"):
            parse(bad)


def test_oracle_reads_relations_and_bindings():
    s = _two_objects()
    assert holds("a small red circle to the left of a large orange square", s)
    assert holds("a circle next to a square", s) and holds("a square next to a circle", s)
    assert not holds("a circle above a square", s)                        # same row: neither above nor below
    assert not holds("a small orange circle to the left of a large red square", s)  # attributes bound wrongly
    assert not holds("a square to the left of a circle", s)
    assert not holds("a circle to the left of a square and a star", s)
    diagonal = scenes.with_object(s, 1, y=0.74)
    assert holds("a circle above a square", diagonal) and not holds("a circle next to a square", diagonal)
    assert holds("a circle to the left of a square", scenes.scene_from_graph(s.graph()))


def test_edits_on_a_hand_built_scene():
    s, rng = _two_objects(), np.random.default_rng(0)
    c = parse("a small red circle to the left of a large orange square")
    twin, swapped = EDITS["swap_obj"](s, c, rng)
    assert swapped.text() == "a large orange square to the left of a small red circle"
    assert (twin.objects[0].x, twin.objects[1].x) == (s.objects[1].x, s.objects[0].x)
    twin, swapped = EDITS["swap_att"](s, c, rng)
    assert holds(swapped, twin) and not holds(swapped, s) and not holds(c, twin)
    assert EDITS["swap_obj"](s, parse("a circle next to a square"), rng) is None   # symmetric: both orders true
    assert EDITS["add_att"](s, c, rng) is None                                     # nothing left to add
    assert edit_of(c, parse("a small red circle to the left of a large orange square and a star")) == "add_obj"
    assert edit_of(c, parse("a small red star to the left of a large orange square")) == "replace_obj"
    assert edit_of(c, parse("a large red circle to the left of a small orange square")) == "swap_att"
    assert edit_of(c, parse("a large red circle to the left of a large orange square")) == "replace_att"
    assert edit_of(c, parse("a small red circle above a large orange square")) == "replace_rel"
    assert edit_of(c, parse("a small red circle above a small orange square")) is None   # two slots


def test_set_counts_and_layout_parse_as_sugarcrepe_and_winoground(built):
    out, manifest, items, graphs = built
    assert manifest["categories"] == {c: SIZE for c in CATEGORIES} and manifest["options"]["size"] == SIZE
    for category, rows in items.items():
        assert list(rows) == [str(k) for k in range(SIZE)]
        for row in rows.values():
            assert set(row) == {"filename", "caption", "negative_caption"}
            assert (out / "images" / row["filename"]).is_file() and row["filename"] in graphs
    files = sorted(p.name for p in (out / "images").iterdir())
    assert len(files) == manifest["images"] == len(graphs) == 7 * SIZE   # one image per item
    by_bytes = {(out / "images" / f).read_bytes(): f for f in files}
    lines = (out / "winoground" / "examples.jsonl").read_text().splitlines()
    assert len(lines) == manifest["winoground"] == SIZE
    for line in lines:
        row = json.loads(line)
        assert set(row) == {"id", "image_0", "image_1", "caption_0", "caption_1", "tag", "secondary_tag",
                            "num_main_preds", "collapsed_tag"}
        g0, g1 = (graphs[by_bytes[(out / "winoground" / "images" / f"{row[k]}.jpg").read_bytes()]]
                  for k in ("image_0", "image_1"))
        assert holds(row["caption_0"], g0) and holds(row["caption_1"], g1)
        assert not holds(row["caption_0"], g1) and not holds(row["caption_1"], g0)
        assert sorted(row["caption_0"].split()) == sorted(row["caption_1"].split())   # the same words


def test_oracle_gets_every_category_right(built):
    _, _, items, graphs = built
    for category, rows in items.items():
        correct = [holds(r["caption"], graphs[r["filename"]])
                   and not holds(r["negative_caption"], graphs[r["filename"]]) for r in rows.values()]
        assert sum(correct) == SIZE, category


def test_every_negative_edits_one_slot_of_its_category(built):
    _, _, items, _ = built
    for category, rows in items.items():
        assert all(edit_of(parse(r["caption"]), parse(r["negative_caption"])) == category for r in rows.values())


def test_every_negative_is_another_images_positive(built):
    _, _, items, _ = built
    positives = defaultdict(set)
    for rows in items.values():
        for r in rows.values():
            positives[r["caption"]].add(r["filename"])
    for rows in items.values():
        for r in rows.values():
            assert positives[r["negative_caption"]] - {r["filename"]}, r


def test_swap_obj_never_uses_a_symmetric_relation(built):
    _, _, items, _ = built
    relations = Counter(parse(r["caption"]).relation for c in CATEGORIES if c != "swap_obj" for r in items[c].values())
    assert relations["next to"] > 0      # the rule has something to exclude
    assert not any(parse(r["caption"]).relation in scenes.SYMMETRIC for r in items["swap_obj"].values())


def _accuracy(rows, score) -> float:
    """Text-only accuracy, a tie counting half (chance is 50 %)."""
    wins = [1.0 if score(r["caption"]) > score(r["negative_caption"]) else
            0.5 if score(r["caption"]) == score(r["negative_caption"]) else 0.0 for r in rows.values()]
    return sum(wins) / len(wins)


def test_caption_only_scorers_stay_at_chance(built):
    _, _, items, _ = built
    word_counts = Counter(w for rows in items.values() for r in rows.values() for w in r["caption"].split())
    as_positive = Counter(r["caption"] for rows in items.values() for r in rows.values())
    length = lambda c: len(c.split())                                   # noqa: E731
    bag_of_words = lambda c: sum(math.log(word_counts[w]) for w in set(c.split()))   # noqa: E731
    digest = lambda c: hashlib.sha256(c.encode()).digest()              # noqa: E731  an arbitrary string order
    memorised = lambda c: as_positive[c]                                # noqa: E731  how often a positive
    half_width = 1.96 * math.sqrt(0.25 / SIZE)
    for category in MIRRORED:
        for score in (length, bag_of_words, digest, memorised):
            accuracy = _accuracy(items[category], score)
            assert abs(accuracy - 0.5) <= half_width, (category, score)
            assert accuracy == 0.5       # mirrored pairs: right on one item of each pair, or a tie on both
    for category in ADDED:
        assert abs(_accuracy(items[category], memorised) - 0.5) <= half_width, category
        # The added slot makes the negative longer: preferring the shorter caption wins every item, as it
        # wins most of SugarCrepe's add files. No pairing can undo it (the longer caption implies the shorter).
        assert _accuracy(items[category], lambda c: -length(c)) == 1.0


def test_generation_is_a_pure_function_of_the_seed(built, tmp_path):
    out = built[0]
    assert generate(5, SIZE) == generate(5, SIZE) != generate(6, SIZE)
    again = write_compositional(tmp_path / "again", seed=5, size=SIZE)
    assert again == built[1]
    for path in sorted(out.rglob("*")):
        if path.is_file():
            assert path.read_bytes() == (tmp_path / "again" / path.relative_to(out)).read_bytes(), path


def test_writer_resumes_and_refuses(built, tmp_path, capsys):
    out = built[0]
    before = (out / "manifest.json").stat().st_mtime_ns
    assert write_compositional(out, seed=5, size=SIZE) == built[1]
    assert "already" in capsys.readouterr().out and (out / "manifest.json").stat().st_mtime_ns == before
    with pytest.raises(UserError, match="other options"):
        write_compositional(out, seed=5, size=SIZE + 2)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a compositional set"):
        write_compositional(tmp_path / "foreign", size=4)
    with pytest.raises(UserError, match="even number"):
        write_compositional(tmp_path / "odd", size=3)
    main(["compositional", "--out", str(tmp_path / "cli"), "--size", "4", "--seed", "1"])
    assert json.loads((tmp_path / "cli" / "add_obj.json").read_text()).keys() == {"0", "1", "2", "3"}
    assert not list(tmp_path.glob(".*.tmp"))


# The tree of build_demo(seed=3, train_size=300, retrieval_size=10, zeroshot_size=10, shard_size=100), recorded
# before scenes existed (commit 5388a5c): without scene_share or compositional_size nothing may change.
DEMO_TREE = "150622ac6e14d0f056ef8e4763b1d2dd8956f7e0be54a610940ef60139be6607"
DEMO = dict(seed=3, train_size=300, retrieval_size=10, zeroshot_size=10, shard_size=100, workers=1)


def _tree_digest(root) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _samples(root) -> dict[str, dict[str, bytes]]:
    samples = defaultdict(dict)
    for shard in sorted((root / "train").glob("*.tar")):
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                samples[key][ext] = tar.extractfile(m).read()
    return samples


def test_demo_without_scenes_is_unchanged_and_scene_share_adds_scenes(tmp_path):
    build_demo(tmp_path / "plain", **DEMO, scene_share=0.0, compositional_size=0)
    assert _tree_digest(tmp_path / "plain") == DEMO_TREE
    manifest = build_demo(tmp_path / "scenes", **DEMO, scene_share=0.25, compositional_size=4)
    assert manifest["options"]["scene_share"] == 0.25 and manifest["train"]["scenes"] == 75
    assert manifest["compositional"]["categories"] == {c: 4 for c in CATEGORIES}
    assert (tmp_path / "scenes" / "compositional" / "swap_att.json").is_file()
    plain, mixed = _samples(tmp_path / "plain"), _samples(tmp_path / "scenes")
    n_scenes = 0
    for key, sample in mixed.items():
        meta = json.loads(sample["json"])
        if "scene" in meta:
            n_scenes += 1
            captions = sample["txt"].decode().split("\n")
            assert len(set(captions)) == 5 and all(holds(c, meta["scene"]) for c in captions)
            negatives = meta["negatives"]  # NegCLIP's data.negatives=shards: oracle-checked, never a caption
            assert 5 <= len(negatives) == len(set(negatives)) and not set(negatives) & set(captions)
            assert not any(holds(n, meta["scene"]) for n in negatives)
        else:
            assert sample == plain[key]      # the other images are the ones the plain build has
    assert n_scenes == 75
    with pytest.raises(UserError, match="scene_share"):
        build_demo(tmp_path / "bad", **DEMO, scene_share=1.5)
