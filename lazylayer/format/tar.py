"""Walk a tar stream header by header, keeping every byte exactly as it is.

The converter must keep a layer's tar byte for byte (its sha256 is the
layer's diff_id), yet know where each member's content starts so a frame can
start there.  :class:`TarScanner` reads the stream once, hands every byte on to
a sink unchanged, and reports each member with the offsets of its headers and
its content.  Header blocks are decoded by :func:`parse_header`, which reads
them exactly as :meth:`tarfile.TarInfo.frombuf` does (checksums, octal and
base-256 numbers, ustar prefixes, GNU headers; a test holds the two to the
same answers) at a fifth of its cost: a layer has tens of thousands of them.
PAX extended headers and GNU long names, which :mod:`tarfile` only handles
with a seekable file, are decoded here too.
"""

from __future__ import annotations

import base64
import math
import struct
import tarfile
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator
from urllib.parse import unquote

from ..errors import FormatError

BLOCK = 512

# Limits on what a layer may hold, applied the same by the converter (when it
# scans a tar) and by every reader of a TOC (docs/format.md, "Limits").  They
# bound the memory and CPU a hostile layer can cost; this is their one home.
MAX_PATH_BYTES = 4096          #: a normalised name or hardlink target, in UTF-8 bytes (Linux PATH_MAX)
MAX_NAME_BYTES = 255           #: one component of it (Linux NAME_MAX)
MAX_PATH_DEPTH = 256           #: components in one name
MAX_TOC_ENTRIES = 500_000      #: tar members in one layer (the converter's default max_members)
MAX_TOC_FRAMES = 1_000_000     #: data frames in one layer
MAX_TOC_BYTES = 64 << 20       #: the TOC's JSON, decompressed
MAX_TOC_VALUES = 8_000_000     #: JSON values (objects, arrays, numbers, strings; keys not counted) in one TOC
MTIME_MAX = 253402214400       #: 9999-12-31T00:00:00Z, where mtimes are clamped: Python's datetime (and ls) print it
MAX_PLAN_RANGES = 4_000_000    #: prefetch ranges in one TOC, or in one plan over all its layers

# typeflag -> TOC type name.  Types tarfile treats as having no data blocks.
_TYPES = {
    tarfile.REGTYPE: "reg",
    tarfile.AREGTYPE: "reg",
    tarfile.CONTTYPE: "reg",
    tarfile.LNKTYPE: "hardlink",
    tarfile.SYMTYPE: "symlink",
    tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block",
    tarfile.DIRTYPE: "dir",
    tarfile.FIFOTYPE: "fifo",
}
_NO_DATA = {tarfile.LNKTYPE, tarfile.SYMTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.DIRTYPE,
            tarfile.FIFOTYPE}
_XATTR_PREFIXES = ("SCHILY.xattr.", "LIBARCHIVE.xattr.")


_HEADER = struct.Struct("100s8s8s8s12s12s8sc100s8x32s32s8s8s155s12x")
_SIGNED = struct.Struct("148b8x356b")
_GNU_TYPES = (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.GNUTYPE_SPARSE)


class TarHeader:
    """The fields of one 512-byte tar header block (what :class:`tarfile.TarInfo` would hold)."""

    __slots__ = ("name", "mode", "uid", "gid", "size", "mtime", "type", "linkname", "uname", "gname",
                 "devmajor", "devminor")

    def __init__(self, *fields: Any) -> None:
        (self.name, self.mode, self.uid, self.gid, self.size, self.mtime, self.type, self.linkname,
         self.uname, self.gname, self.devmajor, self.devminor) = fields


def _number(field: bytes) -> int:
    """A numeric header field: octal text (NUL- or space-terminated), or GNU base-256."""
    if field[0] in (0o200, 0o377):
        n = int.from_bytes(field[1:], "big")
        return -(256 ** (len(field) - 1) - n) if field[0] == 0o377 else n
    end = field.find(b"\0")
    text = field if end < 0 else field[:end]
    try:
        return int(text, 8)  # (bytes: ASCII digits, ASCII white space around; what tarfile takes too)
    except ValueError:
        pass
    try:  # tarfile's own rule, for the rest: "" is 0, str.strip()'s white space
        return int(text.decode("ascii").strip() or "0", 8)
    except ValueError:  # (and UnicodeDecodeError, a subclass)
        raise FormatError("invalid header: a number field is not octal") from None


def _byte_sum(buf: bytes) -> int:
    """The sum of a header block's 512 bytes: Adler-32's first half over each 256 bytes (at most
    65,280, below Adler's modulus 65,521, so exact), ten times quicker than ``sum(buf)``."""
    return (zlib.adler32(buf[:256]) & 0xFFFF) + (zlib.adler32(buf[256:]) & 0xFFFF) - 2


def _string(field: bytes) -> str:
    end = field.find(b"\0")
    return (field if end < 0 else field[:end]).decode("utf-8", "surrogateescape")


def parse_header(buf: bytes) -> TarHeader:
    """Decode one 512-byte header block as :meth:`tarfile.TarInfo.frombuf` does (names as UTF-8
    with surrogate escapes); :class:`FormatError` for a bad checksum or number field."""
    if len(buf) != BLOCK:
        raise FormatError("truncated header")
    (name, mode, uid, gid, size, mtime, chksum, typ, linkname, uname, gname, devmajor, devminor,
     prefix) = _HEADER.unpack(buf)
    want = _number(chksum)
    if want != 256 + _byte_sum(buf) - sum(chksum) and want != 256 + sum(_SIGNED.unpack(buf)):
        raise FormatError("bad checksum")
    text = _string(name)
    if typ == tarfile.AREGTYPE and text.endswith("/"):
        typ = tarfile.DIRTYPE
    if typ == tarfile.DIRTYPE:
        text = text.rstrip("/")
    if prefix[0] and typ not in _GNU_TYPES:
        pre = _string(prefix)
        if pre:
            text = pre + "/" + text
    return TarHeader(text, _number(mode), _number(uid), _number(gid), _number(size), _number(mtime), typ,
                     _string(linkname), _string(uname), _string(gname), _number(devmajor), _number(devminor))


@dataclass
class TarMember:
    """One tar entry: what the TOC records, plus where its bytes lie in the stream."""

    name: str
    type: str
    mode: int
    uid: int
    gid: int
    uname: str
    gname: str
    mtime: float
    size: int
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)
    header_offset: int = 0  # first header block (including PAX / long-name headers)
    offset: int = 0  # first content byte


def _byte_len(s: str) -> int:
    """Length in bytes as the name is on disk (undecodable tar bytes are kept as lone surrogates)."""
    try:
        return len(s.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        return len(s.encode("utf-8", "surrogatepass"))


def _shown(raw: str) -> str:
    r = repr(raw)
    return r if len(r) <= 120 else r[:117] + "..."


def normalize_name(raw: str, what: str = "path") -> str:
    """The path as the TOC keeps it: relative, no '.', '' or trailing '/'; '.' is the root.

    A leading '/' or './' is dropped (as container runtimes do when unpacking);
    a '..' component is refused: a layer may not write outside its root.  So is
    a name over :data:`MAX_PATH_BYTES`, a component over :data:`MAX_NAME_BYTES`
    or more than :data:`MAX_PATH_DEPTH` components.
    """
    if len(raw) > 4 * MAX_PATH_BYTES + 4 * MAX_PATH_DEPTH:  # cheap bound first: no split of a huge name
        raise FormatError(f"tar member {_shown(raw)}: {what} is longer than {MAX_PATH_BYTES} bytes")
    split = raw.split("/")
    if len(raw) <= MAX_PATH_BYTES // 4 and len(split) <= MAX_PATH_DEPTH and "" not in split and "." not in split \
            and ".." not in split and max(map(len, split)) <= MAX_NAME_BYTES // 4:
        return raw  # already normal, and within every limit even at 4 UTF-8 bytes a character (most names)
    parts = []
    for part in split:
        if part in ("", "."):
            continue
        if part == "..":
            raise FormatError(f"tar member {_shown(raw)}: {what} has a '..' component; refusing a layer "
                              "that would write outside its root")
        if len(part) > MAX_NAME_BYTES // 4 and _byte_len(part) > MAX_NAME_BYTES:
            raise FormatError(f"tar member {_shown(raw)}: {what} has a component longer than "
                              f"{MAX_NAME_BYTES} bytes")
        parts.append(part)
        if len(parts) > MAX_PATH_DEPTH:
            raise FormatError(f"tar member {_shown(raw)}: {what} has more than {MAX_PATH_DEPTH} components")
    out = "/".join(parts) if parts else "."
    if len(out) > MAX_PATH_BYTES // 4 and _byte_len(out) > MAX_PATH_BYTES:
        raise FormatError(f"tar member {_shown(raw)}: {what} is longer than {MAX_PATH_BYTES} bytes")
    return out


def check_name(name: Any, what: str = "path") -> str:
    """A name read from a TOC: it must be exactly what :func:`normalize_name` makes of it.

    Readers refuse what the converter would not have written (``..``, ``.``
    or empty components, a leading ``/``, names over the limits) with a
    :class:`FormatError` naming the path.
    """
    if not isinstance(name, str):
        raise FormatError(f"TOC {what} {name!r} is not a string")
    if normalize_name(name, what) != name:
        raise FormatError(f"TOC {what} {_shown(name)} is not normalised (no leading '/', '.', '..' "
                          "or empty components; docs/format.md)")
    return name


def _pax_records(data: bytes, where: int) -> dict[str, bytes]:
    """Parse PAX extended-header records: b'<len> <key>=<value>\\n' each."""
    out: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0:  # NUL padding after the last record
            break
        space = data.find(b" ", pos)
        try:
            length = int(data[pos:space])
        except ValueError:
            raise FormatError(f"malformed PAX header at offset {where}") from None
        record = data[space + 1: pos + length]
        if length <= 0 or pos + length > len(data) or not record.endswith(b"\n") or b"=" not in record:
            raise FormatError(f"malformed PAX record at offset {where}")
        key, value = record[:-1].split(b"=", 1)
        out[key.decode("utf-8", "surrogateescape")] = value
        pos += length
    return out


def _text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


class TarScanner:
    """Reads a tar stream and yields its members, passing every byte to ``sink``.

    ``read(n)`` returns up to n bytes (b"" at the end).  ``sink(data)`` gets the
    stream in order and in full.  Before a member's content reaches the sink,
    ``before_content(member)`` is called, so the caller can start a frame there.
    Everything after the end-of-archive blocks (padding to the record size) is
    passed through too.  A stream that ends mid-member is an error.
    """

    def __init__(self, read: Callable[[int], bytes], sink: Callable[[bytes], object],
                 before_content: Callable[[TarMember], object] | None = None,
                 max_members: int = MAX_TOC_ENTRIES) -> None:
        self._read = read
        self._sink = sink
        self._before = before_content
        self._max = max_members
        self.pos = 0

    def _take(self, n: int) -> bytes:
        buf = self._read(n)
        while len(buf) < n:
            more = self._read(n - len(buf))
            if not more:
                raise FormatError(f"tar stream truncated at offset {self.pos + len(buf)} "
                                  f"(needed {n - len(buf)} more bytes)")
            buf += more
        self._sink(buf)
        self.pos += n
        return buf

    def _copy(self, n: int) -> None:
        """Pass n content bytes through without holding them."""
        while n > 0:
            chunk = self._read(min(n, 4 << 20))
            if not chunk:
                raise FormatError(f"tar stream truncated at offset {self.pos} inside a member")
            self._sink(chunk)
            self.pos += len(chunk)
            n -= len(chunk)

    def members(self) -> Iterator[TarMember]:
        global_pax: dict[str, bytes] = {}
        pax: dict[str, bytes] = {}
        longname: bytes | None = None
        longlink: bytes | None = None
        header_offset = None
        count = 0
        while True:
            start = self.pos
            first = self._read(BLOCK)
            if not first:
                # No end-of-archive blocks: accepted (some writers omit them) at a member boundary.
                if header_offset is not None:
                    raise FormatError(f"tar stream ends after an extended header at offset {start}")
                return
            while len(first) < BLOCK:
                more = self._read(BLOCK - len(first))
                if not more:
                    raise FormatError(f"tar stream truncated inside a header at offset {start}")
                first += more
            self._sink(first)
            self.pos += BLOCK
            if first.count(0) == BLOCK:
                self._drain()  # end of archive: keep the rest as it is
                return
            try:
                info = parse_header(first)
            except FormatError as exc:
                raise FormatError(f"bad tar header at offset {start}: {exc}") from None
            if header_offset is None:
                header_offset = start
            size = info.size
            t = info.type
            if t in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
                     tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
                if size > 64 << 20:
                    raise FormatError(f"extended header of {size} bytes at offset {start} is too large")
                data = self._take(_padded(size))[:size]
                if t == tarfile.XGLTYPE:
                    global_pax.update(_pax_records(data, start))
                elif t in (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE):
                    pax.update(_pax_records(data, start))
                elif t == tarfile.GNUTYPE_LONGNAME:
                    longname = data.rstrip(b"\0")
                else:
                    longlink = data.rstrip(b"\0")
                continue
            if t in (tarfile.GNUTYPE_SPARSE,) or any(k.startswith("GNU.sparse.") for k in pax):
                raise FormatError(f"tar member {info.name!r} at offset {start} is a GNU sparse file; "
                                  "sparse files are not supported")
            fields = {**global_pax, **pax}
            member = self._member(info, fields, longname, longlink, header_offset)
            pax, longname, longlink, header_offset = {}, None, None, None
            count += 1
            if count > self._max:
                raise FormatError(f"more than {self._max} tar members; refusing (raise max_members)")
            size = member.size if t not in _NO_DATA else 0
            member.offset = self.pos
            if size and self._before is not None:
                self._before(member)
            self._copy(size)
            if size % BLOCK:
                self._take(_padded(size) - size)
            yield member

    def _member(self, info: TarHeader, pax: dict[str, bytes], longname: bytes | None,
                longlink: bytes | None, header_offset: int) -> TarMember:
        name = _text(pax["path"]) if "path" in pax else (_text(longname) if longname else info.name)
        link = _text(pax["linkpath"]) if "linkpath" in pax else (_text(longlink) if longlink else info.linkname)
        kind = _TYPES.get(info.type, "reg")  # unknown types carry data like regular files
        size = info.size
        if "size" in pax:
            try:
                size = int(pax["size"])
            except ValueError:
                raise FormatError(f"tar member {name!r}: bad PAX size {pax['size']!r}") from None
        mtime: float = info.mtime
        if "mtime" in pax:
            try:
                mtime = float(pax["mtime"])
                if not math.isfinite(mtime):
                    raise ValueError(mtime)
                mtime = int(mtime) if mtime.is_integer() else mtime
            except ValueError:
                raise FormatError(f"tar member {name!r}: bad PAX mtime") from None
        ints = {}
        for key in ("uid", "gid"):
            try:
                ints[key] = int(pax[key]) if key in pax else getattr(info, key)
            except ValueError:
                raise FormatError(f"tar member {name!r}: bad PAX {key}") from None
        xattrs = {}
        for key, value in pax.items():
            for prefix in _XATTR_PREFIXES:
                if key.startswith(prefix):
                    xname = key[len(prefix):]
                    if prefix.startswith("LIBARCHIVE"):  # name URL-encoded, value base64
                        xname, value = unquote(xname), base64.b64decode(value)
                    xattrs[xname] = value
        norm = normalize_name(name)
        if kind == "hardlink":
            link = normalize_name(link, "hardlink target")
        return TarMember(
            name=norm, type=kind, mode=info.mode, uid=ints["uid"], gid=ints["gid"],
            uname=_text(pax["uname"]) if "uname" in pax else info.uname,
            gname=_text(pax["gname"]) if "gname" in pax else info.gname,
            mtime=mtime, size=size if kind == "reg" else 0, linkname=link,
            devmajor=info.devmajor, devminor=info.devminor, xattrs=xattrs,
            header_offset=header_offset,
        )

    def _drain(self) -> None:
        while chunk := self._read(1 << 20):
            self._sink(chunk)
            self.pos += len(chunk)


def _padded(size: int) -> int:
    return (size + BLOCK - 1) // BLOCK * BLOCK

