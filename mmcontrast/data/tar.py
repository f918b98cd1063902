"""Reading webdataset shards: a tar stream → samples grouped by key, in one pass, strict about every header field.

Python's ``tarfile`` builds a full ``TarInfo`` per member, a third of the loader's time for small images;
this reads the 512-byte ustar headers directly (GNU long names and pax headers included) and groups files
as webdataset does: ``dir/key.ext1.ext2`` → sample ``key``, field ``ext1.ext2`` (lower-cased).
Local files are opened directly; other URLs with webdataset's ``gopen`` (``pipe:`` commands, ``http(s)://``).
Shards compressed with gzip, bzip2 or xz (``.tar.gz`` and the like, whatever their name) are read through
the standard library's decompressors, as webdataset does; zstd is refused with what to do.

A shard is parsed as input from an attacker: every numeric field is checked for its syntax and range before
it is used, a member's size against the bytes the file still holds, long names and pax headers against
their limits (``Limits``), and members are read in bounded pieces. Whatever is wrong raises ``ShardError``,
whose ``reason`` is the count its callers keep (``truncated_shard``, ``corrupt_shard``, ``unreadable_shard``).
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import re
import zlib
from typing import BinaryIO, Callable, Iterator

from .limits import Limits

BLOCK = 512
ZEROS = bytes(BLOCK)
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")  # the fields a sample's image may be in, in order of preference
MAX_NAME_BYTES = 4096   # a GNU long name (PATH_MAX); a longer one is a corrupt header
MAX_MEMBERS = 10_000_000  # per shard; a stream of more empty headers is not a shard
PIECE = 16 * 2**20      # members of unknown-length streams are read in pieces of at most this many bytes
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
_META = re.compile(r"__[^/]*__($|/)")
_REGULAR = (b"0", b"\0", b"7")
_EXTENDED = (b"L", b"K", b"x", b"g")  # GNU long name and link name, pax header, pax global header
_COMPRESSED = ((b"\x1f\x8b", "gzip", lambda f: gzip.GzipFile(fileobj=f)), (b"BZh", "bzip2", bz2.BZ2File),
               (b"\xfd7zXZ\x00", "xz", lzma.LZMAFile))


class ShardError(Exception):
    """A shard that cannot be read (further). ``reason``: ``truncated_shard`` (it ends early),
    ``corrupt_shard`` (a header is wrong, or it is not a tar) or ``unreadable_shard`` (the file cannot be opened or read)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _number(field: bytes, what: str, offset: int) -> int:
    """A header's numeric field: NUL/space-terminated octal, or GNU base-256 (first byte 0x80) for large values."""
    if field[0] & 0x80:
        if field[0] == 0x80:
            return int.from_bytes(field[1:], "big")
        raise ShardError("corrupt_shard", f"negative {what} in the tar header at byte {offset:,}")  # 0xff: base-256 < 0
    digits = field.rstrip(b"\0 ").lstrip(b" ")
    if digits and not digits.translate(None, b"01234567"):  # octal digits only: no sign, no "_", no space inside
        return int(digits, 8)
    if not digits:
        return 0
    raise ShardError("corrupt_shard", f"the {what} field of the tar header at byte {offset:,} is not an octal "
                                      f"number ({field!r})")


class _Reader:
    """Exact reads from a stream, counting the offset; ``remaining`` is known for plain local files."""

    def __init__(self, stream: BinaryIO, size: int | None):
        self.stream, self.offset, self.size = stream, 0, size

    def read(self, n: int) -> bytes:
        # a local file's member size was checked against the file, so one read is safe; a stream of unknown
        # size is read in pieces, so a declared size never becomes an allocation before its bytes arrive
        data = self.stream.read(n if self.size is not None else min(n, PIECE))
        while len(data) < n:  # pipes and sockets may also return less than asked before their end
            more = self.stream.read(min(n - len(data), PIECE))
            if not more:
                raise ShardError("truncated_shard", f"truncated tar: wanted {n:,} bytes at byte {self.offset:,}, "
                                                    f"got {len(data):,}")
            data += more
        self.offset += n
        return data

    def rest_of_header(self, start: bytes) -> bytes:
        """The rest of a 512-byte header whose first read returned ``start`` (a pipe's short read), or what is left."""
        more = b""
        while start and len(start) + len(more) < BLOCK:
            piece = self.stream.read(BLOCK - len(start) - len(more))
            if not piece:
                break
            more += piece
        return more

    def skip(self, n: int) -> None:
        if self.size is not None:
            self.stream.seek(n, os.SEEK_CUR)
            self.offset += n
            return
        while n:
            n -= len(self.read(min(n, PIECE)))

    def check_room(self, n: int, name: str) -> None:
        """A member of ``n`` bytes must fit in what the file still holds (local files; streams find out by reading)."""
        if self.size is not None and self.offset + n > self.size:
            raise ShardError("truncated_shard", f"truncated tar: member {name!r} at byte {self.offset - BLOCK:,} "
                                                f"declares {n:,} bytes, the file holds {self.size - self.offset:,} more")


def _pax(data: bytes, offset: int) -> dict[str, str]:
    """The records of a pax extended header: ``"LEN key=value\\n"``, LEN counting the whole record."""
    records, pos = {}, 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos, pos + 21)
        length = data[pos:space] if space > 0 else b""
        if not length.isdigit() or int(length) < 5 or pos + int(length) > len(data) \
                or data[pos + int(length) - 1] != 0x0A:
            raise ShardError("corrupt_shard", f"malformed pax record in the tar header at byte {offset:,}")
        key, _, value = data[space + 1:pos + int(length) - 1].partition(b"=")
        records[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        pos += int(length)
    return records


def tar_members(stream: BinaryIO, limits: Limits = Limits(), size: int | None = None) -> Iterator[tuple[str, bytes | None]]:
    """(path, data) of every regular file in a tar stream; data is None for a file above ``limits.max_file_bytes``
    (read past, never held). ``size``: the stream's length when known (a local file), so that no member may claim
    more. Raises ``ShardError`` when the stream breaks or a header is wrong."""
    reader = _Reader(stream, size)
    next_name, next_size, members = None, None, 0
    max_members, max_file = MAX_MEMBERS, limits.max_file_bytes  # locals: this loop runs once per member
    while True:
        header = stream.read(BLOCK)
        if len(header) != BLOCK:
            header += reader.rest_of_header(header)
        if not header or header == ZEROS:  # end of archive (or a stream cut at a member boundary)
            return
        at = reader.offset
        reader.offset += BLOCK
        if len(header) < BLOCK:
            raise ShardError("truncated_shard", f"truncated tar: the header at byte {at:,} is cut short")
        checksum = _number(header[148:156], "checksum", at)
        if checksum != sum(header[:148]) + 256 + sum(header[156:]):  # the checksum field counted as spaces
            if at == 0 and header[257:262] != b"ustar":
                raise ShardError("corrupt_shard", "not a tar file (no tar header at its start)")
            raise ShardError("corrupt_shard", f"bad tar header checksum at byte {at:,}")
        members += 1
        if members > max_members:
            raise ShardError("corrupt_shard", f"more than {max_members:,} tar members")
        kind = header[156:157]
        length = _number(header[124:136], "size", at) if next_size is None else next_size
        if kind in _EXTENDED:  # headers for the next member: bounded, read whole
            limit = MAX_NAME_BYTES if kind in (b"L", b"K") else limits.max_pax_bytes
            if length > limit:
                what = "long name" if kind in (b"L", b"K") else "pax header"
                raise ShardError("corrupt_shard", f"{what} of {length:,} bytes at byte {at:,} (the limit is {limit:,}"
                                                  + ("; raise data.max_pax_bytes if the shard is genuine)" if kind in (b"x", b"g") else ")"))
            reader.check_room(length, "extended header")
            data = reader.read(length)
            reader.skip(-length % BLOCK)
            if kind == b"L":  # GNU long name of the next member
                next_name = data.rstrip(b"\0").decode("utf-8", "replace")
            elif kind == b"x":  # pax extended header of the next member
                records = _pax(data, at)
                next_name = records.get("path", next_name)
                if "size" in records:
                    if not records["size"].isdigit():
                        raise ShardError("corrupt_shard", f"pax size {records['size'][:40]!r} at byte {at:,} is not a number")
                    next_size = int(records["size"])
            continue
        name = next_name
        next_name, next_size = None, None
        if name is None:
            name = header[:100].rstrip(b"\0").decode("utf-8", "replace")
            prefix = header[345:500].rstrip(b"\0") if header[257:262] == b"ustar" else b""
            if prefix:
                name = prefix.decode("utf-8", "replace") + "/" + name
        padded = length + -length % BLOCK
        if size is not None and reader.offset + length > size:
            reader.check_room(length, name)
        if kind not in _REGULAR or length > max_file:  # no data (directories, links), or too much
            reader.skip(padded)
            if kind in _REGULAR:
                yield name, None
            continue
        if size is not None:  # a plain local file: one read of data and padding, whose room was checked above
            data = stream.read(padded)
            reader.offset += padded
            yield name, data[:length] if padded != length else data
        else:
            data = reader.read(length)
            reader.skip(padded - length)
            yield name, data


def _open(url: str) -> tuple[BinaryIO, int | None, str]:
    """The shard's byte stream (decompressed when it is compressed), its size when it is a plain local file,
    and the compression's name ("" for none)."""
    try:
        if "://" in url or url.startswith("pipe:"):
            from webdataset.gopen import gopen  # imports torch: not needed for local shards (data_prep's tools)
            stream, size = gopen(url, "rb"), None
        else:
            stream = open(url.removeprefix("file:"), "rb")
            size = os.fstat(stream.fileno()).st_size
        head = stream.read(6)
    except (OSError, ValueError) as e:
        raise ShardError("unreadable_shard", f"cannot read: {e}") from None
    for magic, name, opener in _COMPRESSED:
        if head.startswith(magic):
            return opener(_Prefixed(head, stream)), None, name
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        stream.close()
        raise ShardError("corrupt_shard", "zstd-compressed shard: decompress it (zstd -d) or write it with gzip")
    if size is not None:
        stream.seek(0)
        return stream, size, ""
    return _Prefixed(head, stream), None, ""


class _Prefixed:
    """A stream with its first bytes (already read to tell the format) put back in front."""

    def __init__(self, head: bytes, stream: BinaryIO):
        self.head, self.stream = head, stream

    def read(self, n: int = -1) -> bytes:
        if not self.head:
            return self.stream.read(n)
        if n < 0:
            out, self.head = self.head + self.stream.read(), b""
            return out
        out, self.head = self.head[:n], self.head[n:]
        return out if len(out) == n else out + self.stream.read(n - len(out))

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.stream.close()


def shard_samples(url: str, on_duplicate: Callable[[str], None], limits: Limits = Limits()) -> Iterator[dict]:
    """Samples of one shard: ``{"__key__", "__url__", ext: bytes, ...}``; files sharing a key are consecutive.

    A file name repeated within one sample is passed to ``on_duplicate`` and dropped. A sample with a file above
    ``limits.max_file_bytes`` carries ``"__error__": "file_too_large"`` (and not that file). A shard that breaks
    raises ``ShardError`` after the samples read before the break (as in webdataset: a broken member's own data is
    never part of one, so a sample is complete or visibly missing a field).
    """
    stream, size, codec = _open(url)
    sample: dict | None = None
    closed = False
    try:
        for name, data in tar_members(stream, limits, size):
            if _META.match(name):
                continue
            match = _KEY_EXT.match(name)
            if match is None:
                continue
            key, ext = match.group(1), match.group(2).lower()
            if sample is None or sample["__key__"] != key:
                if sample is not None:
                    yield sample
                sample = {"__key__": key, "__url__": url}
            if data is None:
                sample["__error__"] = "file_too_large"
            elif ext in sample:
                on_duplicate(f"{url}: {name}")
            else:
                sample[ext] = data
        closed = True
        stream.close()  # a pipe: reports its command's failure (curl's 404) only now
    except ShardError:
        if sample is not None:
            yield sample
        raise
    except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError) as e:  # a decompressor's or the stream's own
        if sample is not None:
            yield sample
        if isinstance(e, EOFError):
            reason = "truncated_shard"
        elif (codec and not closed) or not isinstance(e, OSError):  # the decompressor refused the bytes
            reason = "corrupt_shard"
        else:
            reason = "unreadable_shard"
        raise ShardError(reason, f"{codec + ' stream: ' if codec and not closed else ''}{e}") from None
    finally:
        if not closed:
            try:
                stream.close()
            except OSError:  # the failure that stopped the reading is the one reported
                pass
    if sample is not None:
        yield sample
