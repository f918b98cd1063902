"""The webdataset loader: bad samples skipped and counted, ranks split, exact resume of the stream."""

from __future__ import annotations

import io
import itertools
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mmcontrast as mc
from data_prep.writer import write_shard
from mmcontrast.errors import UserError


def _jpeg(i: int) -> bytes:
    rng = np.random.default_rng(i)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _good(i: int) -> dict:
    return {"__key__": f"k{i:04d}", "jpg": _jpeg(i), "txt": f"caption {i}\nother caption {i}"}


@pytest.fixture()
def broken_shards(tmp_path: Path) -> list[str]:
    """Shard a: 6 good + a corrupt JPEG + a sample without caption; shard b: truncated inside sample 4."""
    a = [_good(i) for i in range(6)]
    a.insert(2, {"__key__": "corrupt", "jpg": _jpeg(99)[:60], "txt": "a broken image"})
    a.insert(5, {"__key__": "nocaption", "jpg": _jpeg(98)})
    write_shard(tmp_path / "a.tar", a)
    write_shard(tmp_path / "b.tar", [_good(i) for i in range(10, 16)])
    data = (tmp_path / "b.tar").read_bytes()
    cut = data.index(b"k0014.jpg") + 512 + 100  # the header, then 100 bytes into the image data
    (tmp_path / "b.tar").write_bytes(data[:cut])
    return [str(tmp_path / "a.tar"), str(tmp_path / "b.tar")]


def _transform(img):
    return torch.from_numpy(np.asarray(img.resize((8, 8)), dtype=np.float32)).permute(2, 0, 1)


def _tokenizer(texts):
    return torch.tensor([[len(t)] for t in texts])


def test_bad_samples_are_skipped_and_counted(broken_shards):
    loader = mc.make_loader(broken_shards, _transform, _tokenizer, batch_size=4, repeat=False, shuffle_buffer=0)
    keys = [k for batch in loader for k in batch["key"]]
    assert sorted(keys) == [f"k{i:04d}" for i in [0, 1, 2, 3, 4, 5, 10, 11, 12, 13]]
    assert loader.skipped == {"corrupt_image": 1, "missing_caption": 1, "truncated_shard": 1}


def test_two_ranks_split_the_shards(small_demo):
    seen = []
    for rank in range(2):
        loader = mc.make_loader(str(small_demo / "train"), _transform, _tokenizer, 64, rank=rank, world_size=2,
                                repeat=False, num_workers=2)
        seen.append({k for b in loader for k in b["key"]})
    assert not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) == 2048


def test_missing_shard_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="shard not found: .*nope-000.tar"):
        mc.make_loader(str(tmp_path / "nope-{000..003}.tar"), _transform, _tokenizer, 4)


def test_too_few_shards_for_the_workers(small_demo):
    with pytest.raises(UserError, match="8 shards cannot feed 2 process"):
        mc.make_loader(str(small_demo / "train"), _transform, _tokenizer, 4, world_size=2, num_workers=8)


@pytest.mark.parametrize("workers", [0, 2])
def test_resumed_stream_continues_exactly(small_demo, workers):
    """Batches after a restart from ``state_dict()`` equal those of an uninterrupted stream (2 epochs)."""
    args = (str(small_demo / "train"), mc.make_transforms({"size": 32})[0], _tokenizer, 100)
    kw = dict(seed=5, num_workers=workers, shuffle_buffer=300)
    full = mc.make_loader(*args, **kw)
    it = iter(full)
    reference = [next(it) for _ in range(26)]  # 2048 / 100 → 20 full batches per pass: crosses an epoch
    first = mc.make_loader(*args, **kw)
    it = iter(first)
    for _ in range(13):
        next(it)
    resumed = mc.make_loader(*args, **kw, state=first.state_dict())
    it = iter(resumed)
    for ref in reference[13:]:
        got = next(it)
        assert got["key"] == ref["key"]
        assert torch.equal(got["image"], ref["image"])
        assert torch.equal(got["text"], ref["text"])


def test_stream_without_a_full_batch_stops_with_a_message(broken_shards):
    loader = mc.make_loader(broken_shards, _transform, _tokenizer, batch_size=50, shuffle_buffer=0)
    with pytest.raises(UserError, match="gave no full batch of 50 samples"):
        next(iter(loader))


def test_ids_from_a_json_field_mark_rows_of_one_image(tmp_path):
    """Three rows of one image (as ``data_prep shards`` writes a CSV with repeated images) share an id."""
    import json
    rows = [("img_a.jpg", 0), ("img_b.jpg", 1), ("img_a.jpg", 0), ("img_c.jpg", 2), ("img_a.jpg", 0)]
    samples = [{"__key__": f"{n:04d}", "jpg": _jpeg(i), "txt": f"caption {n}", "json": json.dumps({"source": src})}
               for n, (src, i) in enumerate(rows)]
    samples.append({"__key__": "nojson", "jpg": _jpeg(7), "txt": "no metadata"})
    write_shard(tmp_path / "a.tar", samples)
    loader = mc.make_loader([str(tmp_path / "a.tar")], _transform, _tokenizer, 6, shuffle_buffer=0, repeat=False,
                            ids_from="source")
    batch = next(iter(loader))
    ids = dict(zip(batch["key"], batch["sample_id"].tolist()))
    assert ids["0000"] == ids["0002"] == ids["0004"]
    assert len({ids["0000"], ids["0001"], ids["0003"], ids["nojson"]}) == 4
    plain = next(iter(mc.make_loader([str(tmp_path / "a.tar")], _transform, _tokenizer, 6, shuffle_buffer=0,
                                     repeat=False)))
    assert "sample_id" not in plain
    # the ids reach the objective: the rows of img_a are positives of each other
    from mmcontrast.objectives.pairs import PairwiseObjective
    u = torch.nn.functional.normalize(torch.randn(6, 4), dim=-1)
    positives = PairwiseObjective().pairs(u, u, torch.tensor(1.0), batch["sample_id"]).positives
    assert positives.sum().item() == 3 * 3 + 3


@pytest.fixture()
def two_sources(tmp_path: Path) -> str:
    """Source a: 4 shards of 5 samples (keys a…), source b: 1 shard of 5 (keys b…)."""
    for s in range(4):
        write_shard(tmp_path / f"a{s}.tar", [{**_good(10 * s + i), "__key__": f"a{s}{i}"} for i in range(5)])
    write_shard(tmp_path / "b0.tar", [{**_good(100 + i), "__key__": f"b0{i}"} for i in range(5)])
    return f"{tmp_path}/a{{0..3}}.tar::{tmp_path}/b0.tar"


def test_source_weights_set_the_share_of_each_source(two_sources):
    """2,000 samples = 400 shard draws; b's share is Binomial(400, 0.75)/400 (sd 0.022) — within 4 sd."""
    loader = mc.make_loader(two_sources, _transform, _tokenizer, 50, resampled=True, weights=[0.25, 0.75],
                            epoch_samples=500, shuffle_buffer=0)
    it = iter(loader)
    keys = [k for _ in range(40) for k in next(it)["key"]]
    share_b = sum(k.startswith("b") for k in keys) / len(keys)
    assert abs(share_b - 0.75) < 4 * 0.022, share_b
    # weight 0: the source is never drawn; no weights: every shard alike (b then holds 1/5 of the draws)
    only_a = mc.make_loader(two_sources, _transform, _tokenizer, 50, resampled=True, weights=[1, 0], epoch_samples=500)
    assert all(k.startswith("a") for batch in itertools.islice(only_a, 10) for k in batch["key"])


def test_virtual_epochs_have_a_fixed_number_of_batches(two_sources):
    # 60 samples per virtual epoch, batch 8, one slot: ceil(60 / 8) = 8 batches, then the next epoch
    loader = mc.make_loader(two_sources, _transform, _tokenizer, 8, resampled=True, epoch_samples=60)
    positions = []
    for _, _ in zip(range(10), loader):
        positions.append(loader.positions[0])
    assert positions == [(0, i) for i in range(1, 9)] + [(1, 1), (1, 2)]


@pytest.mark.parametrize("workers", [0, 2])
def test_resampled_stream_resumes_exactly(two_sources, workers):
    args = (two_sources, _transform, _tokenizer, 8)
    kw = dict(seed=3, num_workers=workers, shuffle_buffer=20, resampled=True, weights=[1, 2], epoch_samples=48)
    reference = [b["key"] for b in itertools.islice(mc.make_loader(*args, **kw), 14)]
    first = mc.make_loader(*args, **kw)
    for _ in itertools.islice(first, 5):
        pass
    resumed = [b["key"] for b in itertools.islice(mc.make_loader(*args, **kw, state=first.state_dict()), 9)]
    assert resumed == reference[5:]


def test_weights_need_resampling_and_one_per_source(two_sources):
    with pytest.raises(UserError, match="source weights need resampled shards"):
        mc.make_loader(two_sources, _transform, _tokenizer, 8, weights=[1, 1])
    with pytest.raises(UserError, match="1 weight.s. for 2 source"):
        mc.make_loader(two_sources, _transform, _tokenizer, 8, resampled=True, weights=[1], epoch_samples=10)
    with pytest.raises(UserError, match="set data.epoch_samples"):
        mc.make_loader(two_sources, _transform, _tokenizer, 8, resampled=True)


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_tar_reader_reads_what_tarfile_writes(tmp_path, fmt):
    """Long names (ustar prefix, GNU 'L' records, pax paths), directories and meta files, as webdataset groups them."""
    from mmcontrast.data.tar import shard_samples
    deep = "d" * 60 + "/" + "e" * 60  # > 100 characters: a ustar prefix, a GNU long name or a pax path
    files = [(f"{deep}/a.jpg", b"\xff\xd8one"), (f"{deep}/a.txt", b"first"), ("__index__", b"{}"),
             ("b.seg.png", b"two"), ("b.TXT", b"second"), ("b.txt", b"dup")]
    with tarfile.open(tmp_path / "s.tar", "w", format=fmt) as tar:
        tar.addfile(_dir_info("somedir"))
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    duplicates = []
    samples = list(shard_samples(str(tmp_path / "s.tar"), duplicates.append))
    url = str(tmp_path / "s.tar")
    assert samples == [{"__key__": f"{deep}/a", "__url__": url, "jpg": b"\xff\xd8one", "txt": b"first"},
                       {"__key__": "b", "__url__": url, "seg.png": b"two", "txt": b"second"}]
    assert duplicates == [f"{url}: b.txt"]


def _dir_info(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info
