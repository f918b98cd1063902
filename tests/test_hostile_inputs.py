"""Hostile and broken shards, byte layout by byte layout: each is counted by reason and the run goes on (the
trainer's loader, ``data_prep shards``), reported (``data_prep check``) or refused in one line (``python -m eval``),
never a traceback, a ``MemoryError`` or an allocation of what a header claims."""

from __future__ import annotations

import gzip
import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmcontrast.data import make_loader
from mmcontrast.data import tar as tar_module
from mmcontrast.data.limits import Limits
from mmcontrast.data.tar import ShardError, tar_members
from mmcontrast.errors import UserError


# --- byte layouts -------------------------------------------------------------------------------------------

def header(name: str, size: int = 0, *, size_field: bytes | None = None, kind: bytes = b"0") -> bytes:
    """A ustar header with a correct checksum; ``size_field`` replaces the 12-byte size as written."""
    h = bytearray(512)
    h[:len(name)] = name.encode()
    h[100:108], h[108:116], h[116:124] = b"0000644\0", b"0000000\0", b"0000000\0"
    h[124:136] = size_field if size_field is not None else f"{size:011o}\0".encode()
    h[136:148] = b"00000000000\0"
    h[148:156] = b" " * 8
    h[156:157] = kind
    h[257:265] = b"ustar\x0000"
    h[148:156] = f"{sum(h):06o}\0 ".encode()
    return bytes(h)


def member(name: str, data: bytes, **kw) -> bytes:
    return header(name, len(data), **kw) + data + bytes(-len(data) % 512)


def pax(records: dict[str, str]) -> bytes:
    body = b""
    for key, value in records.items():
        text = f" {key}={value}\n".encode()
        n = len(text) + 1
        while n != len(text) + len(str(n)):  # the length counts its own digits
            n = len(text) + len(str(n))
        body += str(n).encode() + text
    return member("PaxHeader/x", body, kind=b"x")


def jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (24, 24, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG")
    return out.getvalue()


def sample(key: str, seed: int, caption: str | None = None) -> bytes:
    return member(f"{key}.jpg", jpeg(seed)) + member(f"{key}.txt", (caption or f"caption {key}").encode())


def bomb_png(side: int) -> bytes:
    """A bilevel PNG of side × side pixels whose zlib stream of zero rows compresses to kilobytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    row = bytes(1 + (side + 7) // 8)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


END = bytes(1024)
GOOD = sample("k0", 0) + sample("k1", 1)  # the two samples every hostile shard starts with


def _huge_base256(tmp) -> bytes:
    return GOOD + header("k2.jpg", size_field=b"\x80" + (2**80).to_bytes(11, "big")) + bytes(2048)


def _pax_bomb(tmp) -> str:
    """A real pax header of 64 MiB (a sparse file, so the test writes little)."""
    size = 64 * 2**20
    path = tmp / "pax.tar"
    with open(path, "wb") as f:
        f.write(GOOD + header("PaxHeader/k2", size, kind=b"x"))
        f.truncate(len(GOOD) + 512 + size)
        f.seek(0, 2)
        f.write(sample("k3", 3) + END)
    return path.read_bytes()


# name → (shard bytes, or a function of tmp_path; the reason the loader counts; samples the loader keeps of it)
CASES = {
    "huge_base256_size": (_huge_base256, "truncated_shard", 2),
    "negative_base256_size": (lambda t: GOOD + header("k2.jpg", size_field=b"\xff" * 12) + END, "corrupt_shard", 2),
    "negative_octal_size": (lambda t: GOOD + header("k2.jpg", size_field=b"-0000000012\0") + END, "corrupt_shard", 2),
    "non_octal_size": (lambda t: GOOD + header("k2.jpg", size_field=b"00000009zz1\0") + END, "corrupt_shard", 2),
    "not_a_tar": (lambda t: jpeg(5) * 20, "corrupt_shard", 0),
    "zstd_stream": (lambda t: b"\x28\xb5\x2f\xfd" + bytes(2000), "corrupt_shard", 0),
    "gzip_cut_short": (lambda t: gzip.compress(GOOD + sample("k2", 2) + END, mtime=0)[:-300], "truncated_shard", 2),
    "long_name_too_long": (lambda t: GOOD + member("././@LongLink", b"a" * 5000, kind=b"L") + sample("k3", 3) + END,
                           "corrupt_shard", 2),
    "malformed_pax_record": (lambda t: GOOD + member("PaxHeader/x", b"99999 path=x\n", kind=b"x") + END,
                             "corrupt_shard", 2),
    "pax_header_of_64_mib": (_pax_bomb, "corrupt_shard", 2),
    "image_bomb_144_megapixels": (lambda t: GOOD + member("k2.png", bomb_png(12_000)) + member("k2.txt", b"a bomb")
                                  + sample("k3", 3) + END, "too_large", 3),
    "image_bomb_above_pil_limit": (lambda t: GOOD + member("k2.png", bomb_png(20_000)) + member("k2.txt", b"a bomb")
                                   + END, "too_large", 2),
    "caption_of_100_kib": (lambda t: GOOD + sample("k2", 2, "word " * 20_000) + sample("k3", 3) + END,
                           "caption_too_large", 3),
}


def _shard_bytes(case, tmp) -> bytes:
    make = CASES[case][0]
    return make(tmp)


def _shard_dir(root, bad: bytes, suffix: str = ".tar"):
    """A shard folder written as data_prep does: a sound shard, the hostile one, a sound shard after it."""
    root.mkdir(parents=True, exist_ok=True)
    names = ["000000.tar", f"000001{suffix}", "000002.tar"]
    (root / names[0]).write_bytes(sample("a0", 10) + sample("a1", 11) + END)
    (root / names[1]).write_bytes(bad)
    (root / names[2]).write_bytes(sample("b0", 20) + sample("b1", 21) + END)
    counts = [2, 2, 2]
    (root / "manifest.json").write_text(json.dumps(
        {"shards": [{"name": n, "count": c} for n, c in zip(names, counts)], "total": sum(counts)}))
    return root


def _loader_pass(root, limits: Limits = Limits()) -> tuple[list[str], dict]:
    loader = make_loader(str(root), transform=lambda img: torch.zeros(3, 4, 4),
                         tokenizer=lambda captions: torch.zeros(len(captions), 4, dtype=torch.long),
                         batch_size=1, shuffle_buffer=0, repeat=False, caption="first", limits=limits)
    keys = [k for batch in loader for k in batch["key"]]
    return keys, loader.skipped


def _run(module: str, *args, timeout=60):
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    return proc


# --- the cases through every reader ------------------------------------------------------------------------

@pytest.mark.parametrize("case", sorted(CASES))
def test_the_loader_counts_the_shard_by_reason_and_goes_on(case, tmp_path):
    root = _shard_dir(tmp_path / "shards", _shard_bytes(case, tmp_path))
    keys, skipped = _loader_pass(root)
    _, reason, kept = CASES[case]
    assert skipped == {reason: 1}
    hostile = [k for k in keys if k not in ("a0", "a1", "b0", "b1")]
    assert len(hostile) == kept and sorted(keys) == sorted(["a0", "a1", "b0", "b1", *hostile])


@pytest.mark.parametrize("case", sorted(CASES))
def test_data_prep_check_reports_the_reason_in_one_line(case, tmp_path):
    from data_prep.check import check_dir, format_report
    root = _shard_dir(tmp_path / "shards", _shard_bytes(case, tmp_path))
    report = check_dir(root, workers=1, progress=False)
    lines = format_report(report).splitlines()
    assert not report["ok"]
    assert CASES[case][1] in next(ln for ln in lines if ln.startswith("000001.tar:"))
    assert not any(ln.startswith(("000000.tar:", "000002.tar:")) for ln in lines)


@pytest.mark.parametrize("case", sorted(CASES))
def test_data_prep_shards_skips_by_reason_and_keeps_the_rest(case, tmp_path):
    from data_prep.shards import build_shards
    root = _shard_dir(tmp_path / "shards", _shard_bytes(case, tmp_path))
    manifest = build_shards(root, tmp_path / "out", workers=1, progress=False)
    _, reason, kept = CASES[case]
    # data_prep counts a broken input shard as unreadable_shard
    expected = {reason: 1} if reason in ("too_large", "caption_too_large") else {"unreadable_shard": 1}
    assert manifest["skipped"] == expected
    assert manifest["total"] == 4 + kept


@pytest.mark.parametrize("case", ["huge_base256_size", "image_bomb_144_megapixels"])
def test_the_data_prep_programs_end_without_a_traceback(case, tmp_path):
    root = _shard_dir(tmp_path / "shards", _shard_bytes(case, tmp_path))
    check = _run("data_prep", "check", root, "--workers", "1")
    assert check.returncode == 1 and CASES[case][1] in check.stdout, check.stderr
    shards = _run("data_prep", "shards", "--input", root, "--out", tmp_path / "out", "--workers", "1")
    assert shards.returncode == 0 and "samples in 1 shard" in shards.stdout, shards.stderr


@pytest.mark.parametrize("case", sorted(set(CASES) - {"caption_of_100_kib"}))
def test_the_evaluation_refuses_a_broken_set_in_one_line(case, tmp_path):
    from eval.readers import read_wds
    bad = _shard_bytes(case, tmp_path)
    root = tmp_path / "wds"
    (root / "test").mkdir(parents=True)
    (root / "dataset_type.txt").write_text("retrieval")
    (root / "test" / "nshards.txt").write_text("2")
    (root / "test" / "0.tar").write_bytes(sample("a0", 10) + END)
    (root / "test" / "1.tar").write_bytes(bad)
    with pytest.raises(UserError) as err:
        ds = read_wds(root)
        list(ds.images.iter_images(range(len(ds.images))))  # images are decoded when encoded
    assert "1.tar" in str(err.value) or "image too large" in str(err.value)
    assert "\n" not in str(err.value)


def test_the_evaluation_program_refuses_a_broken_set_with_exit_2(tmp_path):
    import mmcontrast as mc
    model = tmp_path / "model"
    mc.save_model_dir(mc.create_model("tiny", seed=0), model)
    root = tmp_path / "wds"
    (root / "test").mkdir(parents=True)
    (root / "dataset_type.txt").write_text("retrieval")
    (root / "test" / "nshards.txt").write_text("1")
    (root / "test" / "0.tar").write_bytes(GOOD + header("k2.jpg", size_field=b"00000009zz1\0") + END)
    proc = _run("eval", "retrieval", "--model", model, "--dataset", f"wds:{root}", "--output", tmp_path / "r.json",
                "--cache-dir", "", "--workers", "0", timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "0.tar: corrupt shard" in proc.stderr


# --- compressed shards are read ------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".tar.gz", ".tar"])
def test_gzip_shards_are_read_whatever_their_name(suffix, tmp_path):
    bad = gzip.compress(sample("g0", 30) + sample("g1", 31) + END, mtime=0)
    root = _shard_dir(tmp_path / "shards", bad, suffix)
    keys, skipped = _loader_pass(root)
    assert skipped == {} and sorted(keys) == ["a0", "a1", "b0", "b1", "g0", "g1"]
    assert _run("data_prep", "check", root, "--workers", "1").returncode == 0
    proc = _run("data_prep", "shards", "--input", root, "--out", tmp_path / "out", "--workers", "1")
    assert proc.returncode == 0 and json.loads((tmp_path / "out" / "manifest.json").read_text())["total"] == 6


# --- header fields, one at a time ------------------------------------------------------------------------------

def _members(data: bytes, limits: Limits = Limits(), size: bool = True):
    return list(tar_members(io.BytesIO(data), limits, len(data) if size else None))


def test_a_pax_size_is_honoured_and_a_pax_path_renames():
    data = pax({"path": "long/dir/k9.txt", "size": "5"}) + header("ignored", size_field=b"00000000000\0") \
        + b"hello" + bytes(507) + END
    assert _members(data) == [("long/dir/k9.txt", b"hello")]


def test_a_file_above_the_limit_is_read_past_and_marked():
    data = member("k0.jpg", b"x" * 3000) + member("k0.txt", b"cap") + member("k1.txt", b"next") + END
    for size in (True, False):  # seeking a local file, or reading a stream in pieces
        assert _members(data, Limits(max_file_bytes=1000), size) == [("k0.jpg", None), ("k0.txt", b"cap"),
                                                                     ("k1.txt", b"next")]


def test_a_stream_of_unknown_size_is_read_in_bounded_pieces(monkeypatch):
    monkeypatch.setattr(tar_module, "PIECE", 1024)
    reads = []

    class Stream(io.BytesIO):
        def read(self, n=-1):
            reads.append(n)
            return super().read(n)
    data = member("k0.txt", b"y" * 5000) + END
    assert list(tar_members(Stream(data))) == [("k0.txt", b"y" * 5000)]
    assert max(reads) <= 1024
    with pytest.raises(ShardError) as err:  # a declared exabyte in a stream: read until it ends, never allocated
        list(tar_members(Stream(header("k.jpg", size_field=b"\x80" + (2**60).to_bytes(11, "big")) + b"z" * 4096)))
    assert err.value.reason == "truncated_shard" and max(reads) <= 1024


def test_the_member_count_is_bounded(monkeypatch):
    monkeypatch.setattr(tar_module, "MAX_MEMBERS", 3)
    data = b"".join(member(f"k{i}.txt", b"c") for i in range(5)) + END
    with pytest.raises(ShardError, match="more than 3 tar members") as err:
        _members(data)
    assert err.value.reason == "corrupt_shard"


def test_a_bad_checksum_and_a_non_tar_are_told_apart():
    good = member("k0.txt", b"c")
    broken = good[:148] + b"0000001\0" + good[156:]
    with pytest.raises(ShardError, match="bad tar header checksum at byte 0"):
        _members(broken + END)
    with pytest.raises(ShardError, match="not a tar file"):
        _members(b"PK\x03\x04" + bytes(600))


def test_peak_memory_of_the_bomb_and_the_pax_header_is_bounded(tmp_path):
    """In a fresh process: reading both costs a few MB above the imports, not the 430 MB the bomb decodes to
    or the 64 MiB the pax header claims."""
    bomb = _shard_dir(tmp_path / "bomb", CASES["image_bomb_144_megapixels"][0](tmp_path))
    paxed = _shard_dir(tmp_path / "pax", _pax_bomb(tmp_path))
    code = (f"import resource\n"
            f"from tests.test_hostile_inputs import _loader_pass\n"
            f"before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            f"counts = [_loader_pass({str(bomb)!r})[1], _loader_pass({str(paxed)!r})[1]]\n"
            f"print(counts, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr[-2000:]
    counts, grown_mb = proc.stdout.rsplit(" ", 1)
    assert counts == "[{'too_large': 1}, {'corrupt_shard': 1}]"
    assert int(grown_mb) < 40


# --- manifests of another shape ---------------------------------------------------------------------------------

FOREIGN = {"shards": [{"file": "000000.tar", "samples": 2}]}


@pytest.mark.parametrize("manifest, what", [
    (FOREIGN, "shard 0 is"), ({"shards": "000000.tar"}, "no list of shards"), ([], "no list of shards"),
    ({"shards": [{"name": "../../etc/passwd", "count": 1}], "total": 1}, "not a file in the directory"),
    ({"shards": [{"name": "000000.tar", "count": -1}], "total": 1}, "shard 0 is"), ("{not json", "not valid JSON"),
])
def test_a_manifest_of_another_shape_is_one_line_everywhere(manifest, what, tmp_path):
    root = tmp_path / "shards"
    root.mkdir()
    (root / "000000.tar").write_bytes(GOOD + END)
    (root / "manifest.json").write_text(manifest if isinstance(manifest, str) else json.dumps(manifest))
    with pytest.raises(UserError, match=what):
        _loader_pass(root)
    for args in (["check", root], ["shards", "--input", root, "--out", tmp_path / "out"]):
        proc = _run("data_prep", *args)
        assert proc.returncode == 2 and what in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
