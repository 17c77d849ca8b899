"""The lazy layer format: tar scanning, frame cuts, the TOC, and reading it back."""

from __future__ import annotations

import hashlib
import io
import random
import tarfile

import pytest
import pyzstd

import lazylayer
from lazylayer import errors
from lazylayer.format import (
    ANNOTATION_TOC_DIGEST,
    ANNOTATION_TOC_POSITION,
    LayerWriter,
    TarScanner,
    Toc,
    normalize_name,
    parse_toc_position,
    read_toc,
)
from lazylayer.format.tar import parse_header


def make_tar(members, fmt=tarfile.PAX_FORMAT) -> bytes:
    """members: (TarInfo kwargs, data or None)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for kw, data in members:
            ti = tarfile.TarInfo(kw.pop("name"))
            for k, v in kw.items():
                setattr(ti, k, v)
            if data is not None:
                ti.size = len(data)
                t.addfile(ti, io.BytesIO(data))
            else:
                t.addfile(ti)
    return buf.getvalue()


def convert(tar: bytes, **kw):
    out = io.BytesIO()
    info = LayerWriter(**kw).write(io.BytesIO(tar).read, out)
    return info, out.getvalue()


def fetcher(blob: bytes):
    calls = []

    def fetch(off: int, n: int) -> bytes:
        calls.append((off, n))
        return blob[off:off + n]
    return fetch, calls


def test_worked_example_in_docs_is_true():
    tar = make_tar([({"name": "hello.txt", "mtime": 1700000000, "mode": 0o644}, b"hello world\n")],
                   fmt=tarfile.USTAR_FORMAT)
    info, blob = convert(tar, threads=1)
    assert len(blob) == 352 and (info.toc_offset, info.toc_length) == (99, 212)
    assert info.toc_digest == "sha256:6682de7fad887c9ce61d01950cb9c6365717a866be281043833f0ef1359c1f98"
    assert blob[0x137:].hex() == ("5e2a4d1821000000" "6300000000280000848f0781"
                                  "d40000000000000099e9d851" "0200000080b1ea928f")
    toc = Toc.from_frame(blob[99:99 + 212])
    assert toc.to_json() == (
        b'{"entries":[{"mode":420,"mtime":1700000000,"name":"hello.txt","offset":512,"size":12,"type":"reg"}],'
        b'"frame_size":2097152,"frames":[[0,99,0,10240,"97ad0339b97dfb2da0b4bdafe49edbadf2556e48b053c3df58a713eeebfbe8de"]],'
        b'"prefetch":[],"tar_size":10240,"version":1}')


def test_every_kind_of_member_and_exact_bytes():
    rng = random.Random(5)
    big = rng.randbytes(300_000)
    members = [
        ({"name": "./", "type": tarfile.DIRTYPE, "mode": 0o755}, None),
        ({"name": "./etc/", "type": tarfile.DIRTYPE, "mode": 0o755}, None),
        ({"name": "/etc/passwd", "mode": 0o644, "uid": 1000, "gid": 1001, "uname": "u", "gname": "g"}, b"root:x:0:0\n"),
        ({"name": "etc/empty"}, b""),
        ({"name": "etc/big.bin", "mode": 0o4755}, big),
        ({"name": "etc/link", "type": tarfile.SYMTYPE, "linkname": "../etc/passwd"}, None),
        ({"name": "etc/hard", "type": tarfile.LNKTYPE, "linkname": "./etc/big.bin"}, None),
        ({"name": "etc/hard2", "type": tarfile.LNKTYPE, "linkname": "etc/big.bin"}, None),
        ({"name": "dev/null", "type": tarfile.CHRTYPE, "devmajor": 1, "devminor": 3}, None),
        ({"name": "dev/sda", "type": tarfile.BLKTYPE, "devmajor": 8, "devminor": 0}, None),
        ({"name": "run/fifo", "type": tarfile.FIFOTYPE}, None),
        ({"name": "d/" + "x" * 200 + "/long-name.txt",
          "pax_headers": {"SCHILY.xattr.user.comment": "hi", "SCHILY.xattr.security.capability": "\x01\x02"}},
         b"long"),
        ({"name": "etc/.wh.removed"}, b""),
        ({"name": "etc/passwd", "mtime": 1.5}, b"second copy\n"),
    ]
    tar = make_tar(members)
    info, blob = convert(tar, frame_size=65536, threads=2)
    assert pyzstd.decompress(blob) == tar
    assert info.diff_id == "sha256:" + hashlib.sha256(tar).hexdigest()
    toc = read_toc(fetcher(blob)[0], len(blob), info.annotations()).toc
    by = {}
    for e in toc.entries:
        by.setdefault(e["name"], []).append(e)
    assert [e["name"] for e in toc.entries][:3] == [".", "etc", "etc/passwd"]
    first, second = by["etc/passwd"]
    assert (first["uid"], first["gid"], first["uname"], first["size"]) == (1000, 1001, "u", 11)
    assert tar[first["offset"]:first["offset"] + 11] == b"root:x:0:0\n"
    assert tar[second["offset"]:second["offset"] + 12] == b"second copy\n" and second["mtime"] == 1.5
    b = by["etc/big.bin"][0]
    assert b["mode"] == 0o4755 and b["nlink"] == 3 and tar[b["offset"]:b["offset"] + len(big)] == big
    assert by["etc/hard"][0] == {"name": "etc/hard", "type": "hardlink", "mode": 0o644, "linkname": "etc/big.bin"}
    assert by["etc/link"][0]["linkname"] == "../etc/passwd"  # symlink targets stay as written
    assert (by["dev/null"][0]["devmajor"], by["dev/null"][0]["devminor"]) == (1, 3)
    assert by["dev/sda"][0]["type"] == "block" and by["run/fifo"][0]["type"] == "fifo"
    long = by["d/" + "x" * 200 + "/long-name.txt"][0]
    assert long["xattrs"] == {"security.capability": "AQI=", "user.comment": "aGk="}
    assert "etc/.wh.removed" in by
    # the big file starts a frame and is split every frame_size bytes
    starts = {f.offset for f in toc.frames}
    assert b["offset"] in starts
    assert all(b["offset"] + k * 65536 in starts for k in range(len(big) // 65536))
    # every frame's sha256 is of its compressed bytes
    for f in toc.frames:
        assert hashlib.sha256(blob[f.compressed_offset:f.compressed_offset + f.compressed_size]).hexdigest() == f.sha256


def test_small_files_share_frames_and_files_never_straddle_an_earlier_frame():
    rng = random.Random(9)
    members = [({"name": f"f{i:05d}"}, rng.randbytes(rng.choice([0, 10, 3000, 70_000, 200_000])))
               for i in range(400)]
    tar = make_tar(members)
    info, blob = convert(tar, frame_size=128 * 1024)
    toc = read_toc(fetcher(blob)[0], len(blob), info.annotations()).toc
    starts = sorted(f.offset for f in toc.frames)
    import bisect
    for e in toc.entries:
        if e["type"] == "reg" and e["size"]:
            i = bisect.bisect_right(starts, e["offset"]) - 1
            frame_end = starts[i + 1] if i + 1 < len(starts) else toc.tar_size
            # either the file starts its frame, or it ends inside the frame it starts in
            assert starts[i] == e["offset"] or e["offset"] + e["size"] <= frame_end, e
    assert len(toc.frames) < 400  # tiny files shared frames


def test_read_toc_one_request_with_annotations_and_fallback_without():
    tar = make_tar([({"name": f"f{i}"}, bytes([i]) * 5000) for i in range(50)])
    info, blob = convert(tar, frame_size=16384)
    fetch, calls = fetcher(blob)
    idx = read_toc(fetch, len(blob), info.annotations())
    assert idx.verified and len(calls) == 1 and calls[0] == (info.toc_offset, len(blob) - info.toc_offset)
    idx2 = read_toc(fetcher(blob)[0], len(blob))
    assert not idx2.verified and idx2.toc == idx.toc
    with lazylayer.SeekableReader(fetch, blob_size=len(blob), tail=idx.seek_table) as r:
        e = idx.toc.entries[7]
        assert r.pread(e["size"], e["offset"]) == bytes([7]) * 5000


def test_tampered_toc_or_annotations_are_refused():
    tar = make_tar([({"name": "a"}, b"x" * 100_000)])
    info, blob = convert(tar)
    ann = info.annotations()
    bad = bytearray(blob)
    bad[info.toc_offset + 20] ^= 1
    with pytest.raises(errors.IntegrityError, match="TOC digest"):
        read_toc(fetcher(bytes(bad))[0], len(blob), ann)
    with pytest.raises(errors.IntegrityError):  # wrong place: its bytes do not hash to the digest
        read_toc(fetcher(blob)[0], len(blob), {**ann, ANNOTATION_TOC_POSITION: "5:10"})
    with pytest.raises(errors.FormatError):
        read_toc(fetcher(blob)[0], len(blob), {**ann, ANNOTATION_TOC_POSITION: f"{len(blob)}:10"})
    with pytest.raises(errors.IntegrityError):
        read_toc(fetcher(blob)[0], len(blob), {**ann, ANNOTATION_TOC_DIGEST: "sha256:" + "0" * 64})
    with pytest.raises(errors.FormatError):  # a plain seekable blob has no TOC
        out = io.BytesIO()
        with lazylayer.SeekableWriter(out) as w:
            w.write(tar)
        read_toc(fetcher(out.getvalue())[0], len(out.getvalue()))


def test_toc_position_parser_takes_only_the_exact_form():
    assert parse_toc_position({ANNOTATION_TOC_POSITION: "99:212"}) == (99, 212)
    assert parse_toc_position({ANNOTATION_TOC_POSITION: "0:1"}, blob_size=1) == (0, 1)
    big = (1 << 63) - 2
    assert parse_toc_position({ANNOTATION_TOC_POSITION: f"{big}:1"}) == (big, 1)


@pytest.mark.parametrize("value", [
    "", ":", "99", "99:", ":212", "99:212:1", "99-212", "99,212",
    "-1:212", "99:-212", "+99:212", "99:+212", " 99:212", "99:212 ", "99 :212", "99: 212", "99:212\n",
    "\t99:212", "9_9:212", "99:2_12", "0x63:212", "99.0:212", "1e2:212", "099:212", "99:0212",
    "\u0661\u0662:212", "99:\uff12\uff11\uff12",  # non-ASCII digits, which int() would take
    "99:0",  # a TOC frame is never empty
    f"{1 << 63}:1", f"{(1 << 63) - 1}:1", f"1:{(1 << 63) - 1}", "9" * 19 + ":1", "1:" + "9" * 4000,
    None, 99, ["99", "212"], b"99:212",
])
def test_hostile_toc_positions_are_format_errors(value):
    with pytest.raises(errors.FormatError, match="io.lazylayer.toc.position"):
        parse_toc_position({ANNOTATION_TOC_POSITION: value})


def test_toc_position_must_be_there_and_within_the_blob():
    for ann in (None, {}, {ANNOTATION_TOC_DIGEST: "sha256:" + "0" * 64}, "99:212"):
        with pytest.raises(errors.FormatError, match="io.lazylayer.toc.position"):
            parse_toc_position(ann)  # type: ignore[arg-type]
    with pytest.raises(errors.FormatError, match="outside the blob"):
        parse_toc_position({ANNOTATION_TOC_POSITION: "99:212"}, blob_size=310)
    # read_toc refuses a hostile position before it fetches anything
    fetch, calls = fetcher(b"x" * 400)
    for value in ("+99:212", "99:212 ", "99:0", "\u0669\u0669:212"):
        with pytest.raises(errors.FormatError, match="io.lazylayer.toc.position"):
            read_toc(fetch, 400, {ANNOTATION_TOC_POSITION: value, ANNOTATION_TOC_DIGEST: "sha256:" + "0" * 64})
    assert calls == []


def test_converting_is_deterministic():
    tar = make_tar([({"name": f"f{i}"}, random.Random(i).randbytes(40_000)) for i in range(60)])
    a = convert(tar, frame_size=65536, threads=1)
    b = convert(tar, frame_size=65536, threads=2)
    assert a[1] == b[1] and a[0] == b[0]


@pytest.mark.parametrize("name", ["../escape", "a/../../b", "a/.."])
def test_dotdot_is_refused(name):
    with pytest.raises(errors.FormatError, match=r"'\.\.'"):
        convert(make_tar([({"name": name}, b"x")]))


def test_hardlink_outside_root_is_refused():
    with pytest.raises(errors.FormatError, match="hardlink"):
        convert(make_tar([({"name": "a", "type": tarfile.LNKTYPE, "linkname": "../../etc/shadow"}, None)]))


def test_truncated_and_corrupt_tars():
    tar = make_tar([({"name": "a"}, b"x" * 5000), ({"name": "b"}, b"y" * 5000)])
    for cut in (100, 512 + 100, 512 + 4000, 6000):
        with pytest.raises(errors.FormatError, match="truncated"):
            convert(tar[:cut])
    bad = bytearray(tar)
    second = tarfile.open(fileobj=io.BytesIO(tar)).getmembers()[1].offset
    bad[second + 10] ^= 0xFF  # in the second header's name: its checksum no longer matches
    with pytest.raises(errors.FormatError, match="bad tar header"):
        convert(bytes(bad))


def test_gnu_sparse_is_refused():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        ti = tarfile.TarInfo("s")
        ti.type = tarfile.GNUTYPE_SPARSE
        t.addfile(ti)
    with pytest.raises(errors.FormatError, match="sparse"):
        convert(buf.getvalue())


def test_gnu_long_names_and_trailing_data_kept():
    tar = make_tar([({"name": "n" * 150}, b"data"), ({"name": "l", "type": tarfile.SYMTYPE,
                                                       "linkname": "t" * 150}, None)], fmt=tarfile.GNU_FORMAT)
    tar += b"\0" * 4096  # extra padding after the end-of-archive blocks stays
    info, blob = convert(tar)
    assert pyzstd.decompress(blob) == tar
    toc = read_toc(fetcher(blob)[0], len(blob), info.annotations()).toc
    assert [e["name"] for e in toc.entries] == ["n" * 150, "l"]
    assert toc.entries[1]["linkname"] == "t" * 150


def test_scanner_reports_offsets_like_tarfile():
    tar = make_tar([({"name": f"dir/f{i}"}, b"z" * (i * 700)) for i in range(30)])
    seen = []
    out = bytearray()
    for m in TarScanner(io.BytesIO(tar).read, out.extend).members():
        seen.append((m.name, m.offset, m.size))
    ref = [(normalize_name(t.name), t.offset_data, t.size) for t in tarfile.open(fileobj=io.BytesIO(tar))]
    assert seen == ref and bytes(out) == tar


def _frombuf(buf: bytes):
    """tarfile's answer for a header block: its fields, or None if it refuses the block."""
    try:
        ti = tarfile.TarInfo.frombuf(buf, "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return None
    return tuple(getattr(ti, k) for k in ("name", "mode", "uid", "gid", "size", "mtime", "type", "linkname",
                                          "uname", "gname", "devmajor", "devminor"))


def _ours(buf: bytes):
    try:
        h = parse_header(buf)
    except errors.FormatError:
        return None
    return tuple(getattr(h, k) for k in h.__slots__)


def _with_checksum(block: bytearray) -> bytes:
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def test_header_parser_agrees_with_tarfile_on_every_block():
    """parse_header is a faster tarfile.TarInfo.frombuf: the same fields, or a refusal where it
    refuses, for real headers of every format and for hostile ones (random bytes in every field,
    numbers in base 256, white space and junk in number fields, bad checksums, signed checksums)."""
    rng = random.Random(7)
    blocks = []
    for fmt in (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        tar = make_tar([({"name": "d/" + "x" * 90 + "/f", "uid": 7, "mtime": 1 << 33 if fmt == tarfile.GNU_FORMAT
                          else 12345, "uname": "ü", "mode": 0o4755}, b"data"),
                        ({"name": "dir/", "type": tarfile.DIRTYPE}, None),
                        ({"name": "p" * 120 + "/q", "type": tarfile.SYMTYPE, "linkname": "t"}, None),
                        ({"name": "dev", "type": tarfile.CHRTYPE, "devmajor": 4, "devminor": 64}, None)], fmt=fmt)
        blocks += [tar[i:i + 512] for i in range(0, len(tar), 512)]
    base = bytearray(blocks[0])
    for _ in range(3000):
        b = bytearray(base)
        kind = rng.randrange(6)
        if kind == 0:  # random bytes somewhere, checksum fixed
            for _ in range(rng.randrange(1, 8)):
                b[rng.randrange(512)] = rng.randrange(256)
            blocks.append(_with_checksum(b))
        elif kind == 1:  # a number field in base 256, positive or negative
            start, width = rng.choice([(100, 8), (108, 8), (124, 12), (136, 12), (329, 8)])
            b[start] = rng.choice([0o200, 0o377])
            b[start + 1:start + width] = bytes(rng.randrange(256) for _ in range(width - 1))
            blocks.append(_with_checksum(b))
        elif kind == 2:  # junk and white space in a number field
            start, width = rng.choice([(100, 8), (108, 8), (124, 12), (136, 12)])
            field = bytes(rng.choice(b"0123456789 \t\0\x1c_+-abc\xff") for _ in range(width))
            b[start:start + width] = field
            blocks.append(_with_checksum(b))
        elif kind == 3:  # a wrong checksum
            b[rng.randrange(512)] ^= 1 + rng.randrange(255)
            blocks.append(bytes(b))
        elif kind == 4:  # high bytes: the signed checksum some old tars wrote
            for i in range(rng.randrange(1, 40)):
                b[rng.randrange(0, 100)] = 0x80 + rng.randrange(128)
            b[148:156] = b" " * 8
            signed = sum(x - 256 if x > 127 else x for x in b)
            b[148:156] = b"%06o\0 " % signed
            blocks.append(bytes(b))
        else:  # a type flag and prefix of any kind
            b[156] = rng.choice(b"\x000123456LKSxgX")
            b[345:345 + 10] = bytes(rng.choice(b"ab/\0") for _ in range(10))
            b[0:5] = rng.choice([b"name/", b"name\0", b"/////"])
            blocks.append(_with_checksum(b))
    refused = 0
    for block in blocks:
        want = _frombuf(block)
        assert _ours(block) == want, block
        refused += want is None
    assert 100 < refused < len(blocks) - 1000  # both kinds of answer were exercised


def test_missing_padding_finds_dropped_zero_blocks_only():
    from lazylayer.format.layer import missing_padding

    tar = make_tar([({"name": "a"}, b"x" * 700)])  # tarfile pads to a 10240-byte record
    want = "sha256:" + hashlib.sha256(tar).hexdigest()
    for cut in (512, 3072, 8704):  # (8704: every zero byte after the content)
        assert missing_padding(hashlib.sha256(tar[:-cut]), want) == cut
    assert missing_padding(hashlib.sha256(tar[:-100]), want) == 0  # not a whole block
    assert missing_padding(hashlib.sha256(tar + b"\0" * 512), want) == 0  # too long: never cut
    assert missing_padding(hashlib.sha256(tar[:-512]), "sha256:" + "0" * 64) == 0  # no padding gives it


def test_normalize_name():
    assert normalize_name("./a//b/") == "a/b"
    assert normalize_name("/") == "."
    assert normalize_name("/abs/path") == "abs/path"


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_non_finite_pax_mtime_is_refused(value):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        ti = tarfile.TarInfo("a")
        ti.pax_headers = {"mtime": value}
        t.addfile(ti)
    with pytest.raises(errors.FormatError, match="mtime"):
        convert(buf.getvalue())


def test_names_within_the_limits_round_trip_and_over_them_are_refused():
    from lazylayer.format import (
        MAX_NAME_BYTES,
        MAX_PATH_BYTES,
        MAX_PATH_DEPTH,
        check_name,
    )

    ok = ["a" * MAX_NAME_BYTES, "/".join(["d"] * MAX_PATH_DEPTH), "/".join(["é" * 127] * 16)]
    assert len("/".join(["é" * 127] * 16).encode()) <= MAX_PATH_BYTES
    for name in ok:
        assert check_name(normalize_name(name)) == name
    bad = ["a" * (MAX_NAME_BYTES + 1), "é" * 128, "/".join(["d"] * (MAX_PATH_DEPTH + 1)),
           "/".join(["é" * 127] * 17), "x/" * 20_000]
    for name in bad:
        with pytest.raises(errors.FormatError):
            normalize_name(name)
    for name in ["/a", "a/", "a//b", "./a", "a/./b", "a/..", ""]:
        with pytest.raises(errors.FormatError, match="not normalised|'..'"):
            check_name(name)
    assert check_name(".") == "."
