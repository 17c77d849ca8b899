"""``lazylayer mount``: real FUSE mounts of real images, and real programs run from them.

Everything here is real: libfuse 3 through /dev/fuse (the tests run as root),
images built by umoci or from this machine's own binaries, converted to lazy
layers and pushed to Debian's ``docker-registry``, mounted by the
``lazylayer`` command in the background as a user would, and read by the
kernel on behalf of ordinary processes (``chroot``, ``sha256sum``, ``os.stat``).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from typing import Any, Iterator

import images
import pytest
from servers import RegistryServer, unique_repo

from lazylayer import mount
from lazylayer.convert import Converter
from lazylayer.image import Image

pytestmark = [
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse on this machine"),
    pytest.mark.skipif(shutil.which("fusermount3") is None, reason="fusermount3 is not installed (apt install fuse3)"),
    pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci is not installed (apt install umoci)"),
]

LAZYLAYER = os.path.join(os.path.dirname(sys.executable), "lazylayer")


def cli(*args: str, check: bool = True, **kw: Any) -> subprocess.CompletedProcess:
    res = subprocess.run([LAZYLAYER, *args], capture_output=True, text=True, timeout=120, **kw)
    if check and res.returncode != 0:
        raise AssertionError(f"lazylayer {' '.join(args)}: exit {res.returncode}\n{res.stdout}\n{res.stderr}")
    return res


class Mounted:
    """A background ``lazylayer mount``, unmounted at the end whatever happens."""

    def __init__(self, ref: str, where: str, cache_dir: str | None, *extra: str) -> None:
        self.path = where
        os.makedirs(where, exist_ok=True)
        opts = ["--cache-dir", cache_dir] if cache_dir else ["--no-cache"]
        self.log = where + ".log"  # next to the mount point, in the test's tmp_path: nothing left behind
        self.result = cli("mount", ref, where, *opts, "-v", "--log", self.log, *extra)
        self.pidfile, _ = mount.state_paths(where)
        self.pid = int(open(self.pidfile).read())

    def log_text(self) -> str:
        with open(self.log) as f:
            return f.read()

    def close(self) -> None:
        if mount.is_mounted(self.path):
            cli("umount", self.path)


@pytest.fixture
def mounted(tmp_path: Any) -> Iterator[Any]:
    made: list[Mounted] = []

    def make(ref: str, cache_dir: str | None = None, *extra: str) -> Mounted:
        m = Mounted(ref, str(tmp_path / f"mnt{len(made)}"), cache_dir, *extra)
        made.append(m)
        return m

    yield make
    for m in made:
        try:
            m.close()
        finally:
            if mount.is_mounted(m.path):  # leave nothing behind for the next test
                subprocess.run(["fusermount3", "-u", "-z", m.path])


# ----------------------------------------------------------------- images


class Built:
    """The reference image of test_fs (umoci's three layers and a hand-made fourth), lazy, in a registry."""

    def __init__(self, work: str, registry: RegistryServer) -> None:
        plain = images.build_fs_image(os.path.join(work, "build"))
        self.lazy = os.path.join(work, "lazy")
        Converter(progress=False).convert(f"oci:{plain}:v1", f"oci:{self.lazy}:v1")
        self.repo = unique_repo("mount")
        Converter(progress=False).convert(f"oci:{self.lazy}:v1", f"docker://{registry.host}/{self.repo}:v1")
        self.ref = f"docker://{registry.host}/{self.repo}:v1"
        self.rootfs = images.unpack(plain, "v1", os.path.join(work, "unpacked"))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, registry: RegistryServer) -> Built:
    return Built(str(tmp_path_factory.mktemp("mountimage")), registry)


def _host_paths(path: str, out: dict[str, tarfile.TarInfo | str], seen: set[str]) -> None:
    """Add ``path`` of this machine to ``out`` (image path -> symlink target or the host file),
    with every symlink met on the way, as the dynamic loader will follow them."""
    if path in seen:
        return
    seen.add(path)
    parts = [p for p in path.split("/") if p]
    cur = ""
    for i, part in enumerate(parts):
        cur = f"{cur}/{part}"
        if os.path.islink(cur):
            target = os.readlink(cur)
            info = tarfile.TarInfo(cur[1:])
            info.type, info.linkname = tarfile.SYMTYPE, target
            out[cur[1:]] = info
            rest = "/".join(parts[i + 1:])
            resolved = os.path.normpath(os.path.join(os.path.dirname(cur), target, rest))
            _host_paths(resolved, out, seen)
            return
    out[cur[1:]] = cur


def _tar(entries: dict[str, tarfile.TarInfo | str], extra: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({os.path.dirname(p) for p in entries if os.path.dirname(p)})
        for d in sorted({"/".join(d.split("/")[:i + 1]) for d in dirs for i in range(d.count("/") + 1)}):
            if d not in entries:
                info = tarfile.TarInfo(d)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
        for name in sorted(entries):
            what = entries[name]
            if isinstance(what, tarfile.TarInfo):
                tar.addfile(what)
            else:
                info = tar.gettarinfo(what, arcname=name)
                with open(what, "rb") as f:
                    tar.addfile(info, f)
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


PROGRAMS = ["/bin/sh", "/usr/bin/cat", "/usr/bin/sha256sum", "/usr/bin/ls", "/usr/bin/wc", "/usr/bin/test"]


class Programs:
    """A two-layer image of this machine's own dash and coreutils (with the libraries ldd names),
    data files, and a whiteout in the second layer; lazy, in a registry."""

    def __init__(self, work: str, registry: RegistryServer, frame_size: int | None = None,
                 extra: dict[str, bytes] | None = None) -> None:
        entries: dict[str, tarfile.TarInfo | str] = {}
        seen: set[str] = set()
        for prog in PROGRAMS:
            _host_paths(prog, entries, seen)
            ldd = subprocess.run(["ldd", os.path.realpath(prog)], capture_output=True, text=True).stdout
            for line in ldd.splitlines():
                for word in line.split():
                    if word.startswith("/"):
                        _host_paths(word, entries, seen)
        self.data = {f"data/file{i}.bin": os.urandom(1000 * (i + 1) ** 3) for i in range(6)}
        self.data.update(extra or {})
        doomed = images.reg("data/removed-later", b"layer 1 only\n")
        layer1 = _tar(entries, [images.reg(n, d) for n, d in self.data.items()] + [doomed])
        layer2 = images.make_tar([images.reg("data/added", b"from layer 2\n"),
                                  images.entry("data/.wh.removed-later", tarfile.REGTYPE, mode=0o644)])
        plain = images.build_layout(os.path.join(work, "plain"), [layer1, layer2], tag="v1")
        self.lazy = os.path.join(work, "lazy")
        Converter(progress=False, **({"frame_size": frame_size} if frame_size else {})).convert(
            plain, f"oci:{self.lazy}:v1")
        repo = unique_repo("programs")
        Converter(progress=False).convert(f"oci:{self.lazy}:v1", f"docker://{registry.host}/{repo}:v1")
        self.ref = f"docker://{registry.host}/{repo}:v1"


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory, registry: RegistryServer) -> Programs:
    return Programs(str(tmp_path_factory.mktemp("programs")), registry)


# ------------------------------------------------------------------ tests


def test_real_programs_run_from_the_mount(programs: Programs, mounted: Any, tmp_path: Any) -> None:
    """dash, ls and sha256sum start from the lazily fetched image (chroot), and see its files right."""
    m = mounted(programs.ref, str(tmp_path / "cache"))
    script = "cd /data && sha256sum file*.bin && ls && cat added && test ! -e removed-later && echo whiteout-ok"
    res = subprocess.run(["chroot", m.path, "/bin/sh", "-c", script], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    expected = "".join(f"{hashlib.sha256(d).hexdigest()}  {n.split('/')[1]}\n" for n, d in sorted(programs.data.items()))
    names = sorted([n.split("/")[1] for n in programs.data] + ["added"])
    assert res.stdout == expected + "\n".join(names) + "\nfrom layer 2\nwhiteout-ok\n"
    # The programs themselves were read through FUSE, lazily: the daemon fetched frames for them.
    cli("umount", m.path)
    assert "frames fetched" in m.log_text()


def test_the_mount_matches_umoci_unpack(built: Built, mounted: Any, tmp_path: Any) -> None:
    """Type, mode, owner, size, mtime, content, link targets, devices, xattrs, nlink and hardlink
    groups of every file, as the kernel reports them, match the image unpacked by umoci."""
    m = mounted(built.ref, str(tmp_path / "cache"))
    got, got_links = images.snapshot(m.path)
    want, want_links = images.snapshot(built.rootfs)
    assert images.diff_snapshots(got, want) == []
    assert got_links == want_links
    # st_blocks as for a file that is all data; directories as ext4 shows them
    st = os.lstat(os.path.join(m.path, "big/large.bin"))
    assert st.st_blocks == (st.st_size + 511) // 512 and st.st_nlink == 2
    assert os.lstat(os.path.join(m.path, "big/large.hard")).st_ino == st.st_ino
    root = os.lstat(m.path)
    assert root.st_nlink == 2 + sum(1 for e in os.scandir(m.path) if e.is_dir(follow_symlinks=False))


def test_large_and_concurrent_reads(built: Built, mounted: Any, tmp_path: Any) -> None:
    """Big reads, reads across frames at odd offsets, and 8 processes reading at once."""
    m = mounted(built.ref, str(tmp_path / "cache"))
    want = open(os.path.join(built.rootfs, "big/large.bin"), "rb").read()
    path = os.path.join(m.path, "big/large.bin")
    fd = os.open(path, os.O_RDONLY)
    try:
        for off, n in [(0, 8 << 20), ((2 << 20) - 7, 3 << 20), (len(want) - 10, 100), (len(want), 10)]:
            assert os.pread(fd, n, off) == want[off:off + n]
    finally:
        os.close(fd)
    files = [os.path.join(dp, f) for dp, _, fs in os.walk(m.path) for f in fs
             if os.path.isfile(os.path.join(dp, f)) and not os.path.islink(os.path.join(dp, f))]
    procs = [subprocess.Popen(["sha256sum", *files[i::8]], stdout=subprocess.PIPE, text=True) for i in range(8)]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    got = {line.split("  ", 1)[1]: line.split("  ", 1)[0] for out in outs for line in out.splitlines()}
    for path_, digest in got.items():
        rel = os.path.relpath(path_, m.path)
        assert "sha256:" + digest == images.file_sha256(os.path.join(built.rootfs, rel)), rel
    assert len(got) == len(files)


def test_a_second_mount_uses_the_disk_cache(built: Built, mounted: Any, tmp_path: Any) -> None:
    cache = str(tmp_path / "cache")
    first = mounted(built.ref, cache)
    data = open(os.path.join(first.path, "big/large.bin"), "rb").read()
    cli("umount", first.path)
    assert not mount.is_mounted(first.path)
    second = mounted(built.ref, cache)
    assert open(os.path.join(second.path, "big/large.bin"), "rb").read() == data
    cli("umount", second.path)
    log = second.log_text().splitlines()[-1]
    assert " 0 frames fetched" in log and " 0 from disk" not in log, log


def test_it_is_read_only(built: Built, mounted: Any) -> None:
    m = mounted(built.ref)
    for attempt in (lambda: open(os.path.join(m.path, "etc/passwd"), "a"),
                    lambda: open(os.path.join(m.path, "new-file"), "w"),
                    lambda: os.mkdir(os.path.join(m.path, "newdir")),
                    lambda: os.unlink(os.path.join(m.path, "etc/passwd")),
                    lambda: os.chmod(os.path.join(m.path, "etc/passwd"), 0o777),
                    lambda: os.symlink("x", os.path.join(m.path, "link"))):
        with pytest.raises(OSError) as info:
            attempt()
        assert info.value.errno == errno.EROFS


def corrupt_copy(built: Built, layout: str) -> str:
    """A copy of ``built``'s lazy layout at ``layout`` with one byte flipped in the frame holding
    ``big/large.bin``'s byte 3 MiB (its first MiB is left good); returns ``layout``."""
    shutil.copytree(built.lazy, layout)
    with Image(f"oci:{layout}:v1", cache=None) as img:
        inode = img.tree.resolve("big/large.bin").inode
        layer = img.layers[inode.layer]
        frame = next(f for f in layer.toc.frames if f.offset <= inode.offset + (3 << 20) < f.offset + f.size)
        path = images.blob_path(layout, layer.digest)
    with open(path, "r+b") as f:
        f.seek(frame.compressed_offset + frame.compressed_size // 2)
        b = f.read(1)
        f.seek(-1, io.SEEK_CUR)
        f.write(bytes([b[0] ^ 0x40]))
    return layout


def test_a_corrupt_frame_is_eio_and_logged(built: Built, mounted: Any, tmp_path: Any) -> None:
    """Bad bytes never reach a process: the read fails with EIO, the daemon logs why and keeps serving."""
    layout = corrupt_copy(built, str(tmp_path / "bad"))
    m = mounted(f"oci:{layout}:v1")
    fd = os.open(os.path.join(m.path, "big/large.bin"), os.O_RDONLY)
    try:
        assert os.pread(fd, 4096, 0) == open(os.path.join(built.rootfs, "big/large.bin"), "rb").read(4096)
        with pytest.raises(OSError) as info:
            os.pread(fd, 4096, 3 << 20)
        assert info.value.errno == errno.EIO
    finally:
        os.close(fd)
    assert open(os.path.join(m.path, "etc/passwd"), "rb").read() == \
        open(os.path.join(built.rootfs, "etc/passwd"), "rb").read()
    assert "EIO" in m.log_text() and "big/large.bin" in m.log_text()


def test_foreground_mount_unmounts_cleanly_on_sigterm_and_sigint(built: Built, tmp_path: Any) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        where = str(tmp_path / f"fg{sig}")
        os.makedirs(where)
        proc = subprocess.Popen([LAZYLAYER, "mount", "--foreground", "--no-cache", "-v", built.ref, where],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 30
            while not mount.is_mounted(where):
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
                time.sleep(0.05)
            assert os.path.exists(os.path.join(where, "etc/passwd"))
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
            if mount.is_mounted(where):
                subprocess.run(["fusermount3", "-u", "-z", where])
        assert proc.returncode == 0, err
        assert not mount.is_mounted(where)
        assert "unmounted" in err


def test_mount_errors(built: Built, registry: RegistryServer, tmp_path: Any) -> None:
    """A mount that fails exits 1 with its reason; usage errors (a mount point that is not a directory) 2."""
    where = str(tmp_path / "mnt")
    os.makedirs(where)
    log = str(tmp_path / "mount.log")
    res = cli("mount", f"docker://{registry.host}/does-not-exist:v1", where, "--no-cache", "--log", log,
              check=False)
    assert res.returncode == 1 and "not found" in res.stderr.lower() and "Traceback" not in res.stderr
    assert not mount.is_mounted(where)
    res = cli("mount", built.ref, str(tmp_path / "missing"), "--log", log, check=False)
    assert res.returncode == 2 and "not a directory" in res.stderr
    res = cli("umount", where, check=False)
    assert res.returncode == 1 and "not a lazylayer mount" in res.stderr
    with open(tmp_path / "file", "w"):
        pass
    res = cli("mount", built.ref, str(tmp_path / "file"), "--log", log, check=False)
    assert res.returncode == 2


@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0, reason="needs unshare and root")
def test_a_mount_that_libfuse_cannot_make_exits_1(built: Built, tmp_path: Any) -> None:
    """FUSE itself failing (here: /dev/fuse hidden behind /dev/null, in a mount namespace of the test's
    own) is a failed mount, exit 1 with the reason, in the background and in the foreground."""
    where = str(tmp_path / "mnt")
    os.makedirs(where)
    log = str(tmp_path / "mount.log")
    script = (f"mount --bind /dev/null /dev/fuse && "
              f"{LAZYLAYER} mount {built.ref} {where} --no-cache --log {log}; echo background=$?; "
              f"{LAZYLAYER} mount -f {built.ref} {where} --no-cache; echo foreground=$?")
    res = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                         capture_output=True, text=True, timeout=120)
    assert "background=1\n" in res.stdout and "foreground=1\n" in res.stdout, (res.stdout, res.stderr)
    assert "could not mount" in res.stderr and "Traceback" not in res.stderr
    assert not mount.is_mounted(where)


def test_the_log_without_v_has_the_mount_and_the_counters(built: Built, tmp_path: Any) -> None:
    """docs/mount.md: the log starts with the mount line and ends with the counters, without -v too.
    The default log holds the last mount only; --log FILE collects every mount."""
    where = str(tmp_path / "mnt")
    os.makedirs(where)
    _, default_log = mount.state_paths(where)
    try:
        for _ in range(2):
            cli("mount", built.ref, where, "--no-cache", "-q")
            assert open(os.path.join(where, "etc/passwd"), "rb").read()
            cli("umount", where)
        lines = open(default_log).read().splitlines()
        assert len(lines) == 2, lines  # one mount's lines: the first mount's were not kept
        assert "INFO mounted " + built.ref in lines[0] and " frames fetched " in lines[1], lines
    finally:
        if os.path.exists(default_log):
            os.unlink(default_log)
    mine = str(tmp_path / "mine.log")
    for _ in range(2):
        cli("mount", built.ref, where, "--no-cache", "-q", "--log", mine)
        cli("umount", where)
    assert sum("INFO unmounted" in line for line in open(mine)) == 2
    assert not os.path.exists(default_log)


def test_lazy_umount_while_in_use_detaches_and_exits_0(built: Built, mounted: Any) -> None:
    """``umount -l`` with a process whose cwd is inside: exit 0 at once, and the daemon goes when it does."""
    m = mounted(built.ref)
    holder = subprocess.Popen(["sleep", "60"], cwd=m.path)
    try:
        t0 = time.monotonic()
        res = cli("umount", "-l", m.path, check=False)
        assert res.returncode == 0, res.stderr
        assert time.monotonic() - t0 < 15
        assert f"detached {m.path}; the daemon (pid {m.pid}) exits when the last process using it leaves" \
            in res.stdout, res.stdout
        assert not mount.is_mounted(m.path)
        assert mount.control._alive(m.pid)  # still serving the holder
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 30
    while mount.control._alive(m.pid):
        assert time.monotonic() < deadline, f"daemon {m.pid} still running after its last user left"
        time.sleep(0.05)


def test_mounting_twice_is_refused(built: Built, mounted: Any) -> None:
    m = mounted(built.ref)
    res = cli("mount", built.ref, m.path, "--no-cache", check=False)
    assert res.returncode == 1 and "already" in res.stderr


# ------------------------------------------------------------------ the other commands


def test_ls(built: Built, tmp_path: Any) -> None:
    cache = str(tmp_path / "cache")
    res = cli("ls", built.ref, "/", "--cache-dir", cache)
    assert res.stdout.split() == sorted(os.listdir(built.rootfs))
    res = cli("ls", "-l", built.ref, "big", "--cache-dir", cache)
    lines = {line.split()[-1] if "->" not in line else line.split()[-3]: line for line in res.stdout.splitlines()}
    assert lines["large.bin"].startswith("-rw-r----- ") and " 9830400 " in lines["large.bin"]
    assert lines["escape"].endswith("escape -> ../../../../../etc/passwd")
    res = cli("ls", "--json", "-R", built.ref, "/", "--cache-dir", cache)
    entries = json.loads(res.stdout)
    want = {os.path.relpath(os.path.join(dp, n), built.rootfs) for dp, ds, fs in os.walk(built.rootfs)
            for n in ds + fs}
    assert {e["name"].lstrip("/") for e in entries} == want
    res = cli("ls", built.ref, "/no/such", "--cache-dir", cache, check=False)
    assert res.returncode == 1 and "No such file" in res.stderr
    # symlinks as GNU ls shows them: the link itself with -d or when it is not to a directory
    assert cli("ls", "-ld", built.ref, "/big/dirlink", "--cache-dir", cache).stdout.startswith("lrwxrwxrwx ")
    assert cli("ls", "-l", built.ref, "/big/escape", "--cache-dir", cache).stdout.rstrip().endswith(
        "/big/escape -> ../../../../../etc/passwd")
    assert cli("ls", built.ref, "/big/dirlink", "--cache-dir", cache).stdout.split() == \
        sorted(os.listdir(os.path.join(built.rootfs, "app/lib")))


def test_cat_an_image_file_and_a_blob(built: Built, tmp_path: Any) -> None:
    want = open(os.path.join(built.rootfs, "big/large.bin"), "rb").read()
    res = subprocess.run([LAZYLAYER, "cat", built.ref, "/big/large.hard", "--no-cache"], capture_output=True)
    assert res.returncode == 0 and res.stdout == want
    res = subprocess.run([LAZYLAYER, "cat", built.ref, "big/dirlink/../../etc/passwd", "--offset", "5",
                          "--length", "10", "--no-cache"], capture_output=True)
    assert res.returncode == 0
    assert res.stdout == open(os.path.join(built.rootfs, "etc/passwd"), "rb").read()[5:15]
    res = cli("cat", built.ref, "big", "--no-cache", check=False)
    assert res.returncode == 1 and "not a regular file" in res.stderr


# ----------------------------------------------------------------- the Python API: lazylayer.Mount


def _extension_module() -> tuple[str, str]:
    """A stdlib extension module that neither Python's start-up nor lazylayer imports: (name, path)."""
    import importlib.util

    for name in ("_codecs_jp", "_codecs_kr", "_testbuffer", "_sqlite3", "_crypt", "audioop", "_curses"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin and spec.origin.endswith(".so") and name not in sys.modules:
            return name, spec.origin
    pytest.skip("no stdlib extension module in a .so file here")


class Small:
    """A one-layer lazy image in the registry: an extension module (a copy of one of Python's own),
    an 8 MiB file of random bytes, and a small one."""

    def __init__(self, work: str, registry: RegistryServer) -> None:
        self.module, origin = _extension_module()
        self.so_name = os.path.basename(origin)
        with open(origin, "rb") as f:
            self.so = f.read()
        self.blob = os.urandom(8 << 20)
        tar = images.make_tar([images.entry("lib", tarfile.DIRTYPE),
                               images.reg(f"lib/{self.so_name}", self.so, 0o755),
                               images.entry("data", tarfile.DIRTYPE), images.reg("data/blob.bin", self.blob),
                               images.reg("data/small.txt", b"hello from the mount\n")])
        src = images.build_layout(os.path.join(work, "src"), [tar], "v1")
        self.repo = unique_repo("mountapi")
        self.ref = f"docker://{registry.host}/{self.repo}:v1"
        Converter(progress=False).convert(src, self.ref)
        with Image(self.ref, cache=None) as img:
            self.layer = img.layers[0].digest


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory, registry: RegistryServer) -> Small:
    return Small(str(tmp_path_factory.mktemp("mountapi")), registry)


def _fetchers() -> set[int]:
    out = set()
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"lazylayer.mount.fetcher" in f.read():
                    out.add(int(pid))
        except (OSError, ValueError):
            pass
    return out


def test_mount_api_serves_in_c_with_no_lookup_per_entry(built: Built, tmp_path: Any) -> None:
    """``lazylayer.Mount``: returns mounted; the files are the image's; a ``find -ls`` and a ``tar``
    of the whole root send no LOOKUP at all (READDIRPLUS entries are kept by the kernel) and reads
    of cached frames never wait on the fetcher; ``close()`` unmounts and the fetcher exits."""
    import lazylayer

    where = str(tmp_path / "mnt")
    os.makedirs(where)
    before = _fetchers()
    with lazylayer.Mount(built.ref, where, cache=lazylayer.DiskCache(str(tmp_path / "cache"))) as m:
        assert m.mounted and mount.is_mounted(where)
        entry = mount.mount_entry(where)
        assert entry is not None and entry["fstype"] == "fuse.lazylayer"
        assert len(_fetchers() - before) == 1  # the image is remote: a fetcher process serves misses
        base = m.stats()
        found = subprocess.run(["find", where, "-ls"], capture_output=True, text=True, check=True).stdout
        assert len(found.splitlines()) > 20
        tar = subprocess.run(["tar", "-cf", "-", "-C", where, "."], capture_output=True, check=True).stdout
        s = m.stats()
        assert s["lookups"] == base["lookups"] and s["negative"] == base["negative"], (base, s)
        assert s["readdirs"] > 0 and s["reads"] > 0 and s["fetches"] > 0 and s["eio"] == 0, s
        with tarfile.open(fileobj=io.BytesIO(tar)) as t:
            for info in t.getmembers():
                if info.isfile():
                    with open(os.path.join(built.rootfs, info.name), "rb") as f:
                        assert t.extractfile(info).read() == f.read(), info.name  # type: ignore[union-attr]
        # Read again: everything is in the page cache or the memory cache; nothing is fetched.
        fetched = m.stats()["fetches"]
        subprocess.run(["tar", "-cf", "/dev/null", "-C", where, "."], check=True)
        assert m.stats()["fetches"] == fetched
    assert not m.mounted and not mount.is_mounted(where)
    deadline = time.monotonic() + 30
    while _fetchers() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _fetchers() - before, "the fetcher outlived its mount"


def test_a_mount_of_layers_kept_whole_reads_them_in_c_as_local(tmp_path: Any) -> None:
    """A plain gzip image: its layers are fetched whole into local files before the mount is
    ready; the server reads them in C and counts them as local frames, not fetches."""
    import warnings

    import lazylayer
    from lazylayer.image import NotLazyWarning

    data = os.urandom(5_000_000)
    tar = images.make_tar([images.reg("big.bin", data), images.reg("small.txt", b"hello\n")])
    ref = images.build_layout(str(tmp_path / "plain"), [tar], tag="v1")
    where = str(tmp_path / "mnt")
    os.makedirs(where)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotLazyWarning)
        with lazylayer.Mount(ref, where, cache=lazylayer.DiskCache(str(tmp_path / "cache"))) as m:
            with open(os.path.join(where, "big.bin"), "rb") as f:
                assert f.read() == data
            s = m.stats()
            assert s["fetches"] == s["bytes_fetched"] == 0 and s["eio"] == 0, s
            assert s["frames_local"] >= 3 and s["bytes_local"] >= len(data), s  # 2 MiB stored frames


def test_an_image_without_xattrs_stops_the_kernel_asking(built: Built, small: Small, tmp_path: Any) -> None:
    """An image with no extended attribute at all answers the first GETXATTR and LISTXATTR with
    ENOSYS, so the kernel asks no more (callers get EOPNOTSUPP); an image with some answers each
    name (ENODATA for one it does not have)."""
    import lazylayer

    where = str(tmp_path / "mnt")
    os.makedirs(where)
    with lazylayer.Mount(small.ref, where, cache=None) as m:
        files = [os.path.join(where, f) for f in os.listdir(where)]
        for path in files * 3:
            with pytest.raises(OSError) as err:
                os.getxattr(path, "security.capability", follow_symlinks=False)
            assert err.value.errno == errno.EOPNOTSUPP
            with pytest.raises(OSError) as err:
                os.listxattr(path, follow_symlinks=False)
            assert err.value.errno == errno.EOPNOTSUPP
        assert m.stats()["xattrs"] == 2  # one GETXATTR and one LISTXATTR, then the kernel knows
    want = os.listxattr(os.path.join(built.rootfs, "etc/hostname"), follow_symlinks=False)
    if not want:
        pytest.skip("the image was built where user xattrs are not kept (images.build_umoci_image)")
    with lazylayer.Mount(built.ref, where, cache=None) as m:
        hostname = os.path.join(where, "etc/hostname")
        assert os.listxattr(hostname, follow_symlinks=False) == want
        with pytest.raises(OSError) as err:
            os.getxattr(hostname, "user.not-there", follow_symlinks=False)
        assert err.value.errno == errno.ENODATA
        assert m.stats()["xattrs"] >= 2


_IMPORT_FROM_OWN_MOUNT = r"""
import importlib, mmap, os, sys, hashlib
import lazylayer
ref, where, cache, name = sys.argv[1:5]
assert name not in sys.modules
with lazylayer.Mount(ref, where, cache=lazylayer.DiskCache(cache)) as m:
    # This thread holds the GIL (and dlopen its loader lock) while the kernel pages the module in
    # from the cold mount, and while it faults on the mmap below: the misses must need neither.
    sys.path.insert(0, os.path.join(where, "lib"))
    mod = importlib.import_module(name)
    assert mod.__file__.startswith(where), mod.__file__
    with open(os.path.join(where, "data/blob.bin"), "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
        digest = hashlib.sha256(mm).hexdigest()  # faults page by page, GIL held
        total = sum(mm[i] for i in range(0, len(mm), 4096))
        mm.close()
    print(digest, total, m.stats()["fetches"])
"""


def test_a_process_imports_an_extension_module_from_its_own_cold_mount(small: Small, tmp_path: Any) -> None:
    """The deadlock hazard of serving in the caller's process (docs/mount.md): a thread holding the
    GIL faults on the mount (dlopen of a ``.so`` there, an mmap of a file there) while the frames are
    not fetched yet.  The fetches happen in the fetcher process, so this finishes."""
    where = str(tmp_path / "mnt")
    os.makedirs(where)
    res = subprocess.run([sys.executable, "-c", _IMPORT_FROM_OWN_MOUNT, small.ref, where, str(tmp_path / "cache"),
                          small.module], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    digest, total, fetches = res.stdout.split()
    assert digest == hashlib.sha256(small.blob).hexdigest()
    assert int(total) == sum(small.blob[i] for i in range(0, len(small.blob), 4096))
    assert int(fetches) > 0
    assert not mount.is_mounted(where)


_MOUNT_MODULES = r"""
import json, os, sys
import lazylayer.cli  # what `lazylayer mount` imports, then what its daemon does
from lazylayer.image import DiskCache, Image
from lazylayer.mount import Mount, daemon
ref, where, cache = sys.argv[1:4]
with Image(ref, cache=DiskCache(cache)) as img, Mount(img, where):
    os.listdir(where)
print(json.dumps(sorted(sys.modules)))
"""


def test_a_mount_imports_only_what_it_needs(small: Small, tmp_path: Any) -> None:
    """Start-up (docs/benchmarks.md): the serving process of a docker:// image loads neither the
    converter and re-encoder, the tar stores, fsspec, nor the prefetch planner (which runs in the
    fetcher process), and no TLS context when the registry is plain HTTP."""
    where = str(tmp_path / "mnt")
    os.makedirs(where)
    res = subprocess.run([sys.executable, "-c", _MOUNT_MODULES, small.ref, where, str(tmp_path / "cache")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    loaded = set(json.loads(res.stdout))
    assert "lazylayer.mount.fuse" in loaded and "lazylayer.registry.client" in loaded  # the check can fail
    unwanted = {"lazylayer.convert", "lazylayer.format.reencode", "lazylayer.oci.archive", "lazylayer.oci.layout",
                "lazylayer.fs", "fsspec", "lazylayer.prefetch", "lazylayer.record", "lazylayer.registry.referrers"}
    assert sorted(unwanted & loaded) == []


def test_the_fetcher_never_imports_lazylayer_from_the_working_directory(tmp_path: Any, monkeypatch: Any) -> None:
    """``python -c`` puts the working directory first on sys.path: a mount started where a
    ``lazylayer`` directory lies (another version's checkout, or one planted for a root daemon to
    import) must still run this package's fetcher.  (It did not: a benchmark's A/B of two
    checkouts ran the fetcher of the one it was started from.)"""
    from lazylayer.mount.fetcher import Fetcher

    decoy = tmp_path / "lazylayer"
    decoy.mkdir()
    marker = tmp_path / "imported"
    (decoy / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise SystemExit(7)\n")
    monkeypatch.chdir(tmp_path)
    f = Fetcher(1)
    f.close()  # sent nothing: the process imports its module, reads EOF and exits 0
    assert f.proc.returncode == 0
    assert not marker.exists()


def test_a_waiting_miss_does_not_hold_up_cached_reads(small: Small, registry: RegistryServer, fault_proxy: Any,
                                                      tmp_path: Any) -> None:
    """While one read waits on a stalled fetch, a read of frames already on disk is answered."""
    import lazylayer

    proxy = fault_proxy(registry.url)
    ref = f"docker://{proxy.host}/{small.repo}:v1"
    cache = str(tmp_path / "cache")
    where = str(tmp_path / "mnt")
    os.makedirs(where)
    with lazylayer.Mount(ref, where, cache=lazylayer.DiskCache(cache), prefetch=None, readahead=False) as m:
        with open(os.path.join(where, "data/small.txt"), "rb") as f:  # its frame goes to the disk cache
            assert f.read() == b"hello from the mount\n"
    stall = proxy.add_fault("stall", f"/v2/.*/blobs/{small.layer}$", times=1, seconds=8)  # the layer's ranges
    with lazylayer.Mount(ref, where, cache=lazylayer.DiskCache(cache), prefetch=None, readahead=False) as m:
        got: list[bytes] = []
        waiter = threading.Thread(target=lambda: got.append(open(os.path.join(where, "data/blob.bin"),
                                                                   "rb").read()))
        waiter.start()
        deadline = time.monotonic() + 30
        while (stall.hits == 0 or m.stats()["misses"] == 0) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stall.hits == 1 and m.stats()["misses"] >= 1 and waiter.is_alive()
        with open(os.path.join(where, "data/small.txt"), "rb") as f:
            assert f.read() == b"hello from the mount\n"
        assert waiter.is_alive(), "the cached read was answered only after the stalled fetch"
        waiter.join(60)
        assert got == [small.blob]  # the stalled fetch was retried
        assert m.stats()["eio"] == 0


def test_async_mount_and_two_mounts_sharing_the_memory_cache(small: Small, tmp_path: Any) -> None:
    """``AsyncMount`` in an event loop; two mounts of one image in one process share the memory cache:
    what one read, the other serves without fetching or reading the disk cache."""
    import asyncio

    from lazylayer.mount import AsyncMount

    cache = str(tmp_path / "cache")
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    os.makedirs(a)
    os.makedirs(b)

    async def main() -> tuple[dict[str, int], dict[str, int]]:
        import lazylayer

        memory = lazylayer.BlockCache(64 << 20)  # its own: this process's default one may hold the blob already
        async with await AsyncMount.open(small.ref, a, cache=lazylayer.DiskCache(cache), memory_cache=memory) as ma:
            async with await AsyncMount.open(small.ref, b, cache=lazylayer.DiskCache(cache),
                                             memory_cache=memory) as mb:
                data = await asyncio.to_thread(lambda: open(os.path.join(a, "data/blob.bin"), "rb").read())
                assert data == small.blob
                again = await asyncio.to_thread(lambda: open(os.path.join(b, "data/blob.bin"), "rb").read())
                assert again == small.blob
                return ma.stats(), mb.stats()

    sa, sb = asyncio.run(main())
    assert sa["fetches"] + sa["frames_from_disk"] > 0, sa  # (read-ahead may have put them on disk first)
    assert sb["reads"] > 0 and sb["fetches"] == 0 and sb["frames_from_disk"] == 0 and sb["misses"] == 0, sb
    assert not mount.is_mounted(a) and not mount.is_mounted(b)


def test_a_user_without_root_mounts_through_fusermount3(small: Small, tmp_path: Any) -> None:
    """Without root the server gets its /dev/fuse descriptor from fusermount3 (setuid)."""
    if shutil.which("setpriv") is None or os.geteuid() != 0:
        pytest.skip("needs setpriv and root (to become another user)")
    if not os.stat("/dev/fuse").st_mode & 0o006:  # fusermount3 opens it as the user
        pytest.skip("/dev/fuse is not open to other users here (mode "
                    f"{os.stat('/dev/fuse').st_mode & 0o777:o}): no mounts without root on this machine")
    import tempfile

    user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable]
    probe = subprocess.run(user + ["-c", "import sys, subprocess, lazylayer; "
                                         "subprocess.run([sys.executable, '-c', '0'], check=True)"],
                           capture_output=True, text=True, cwd="/")
    if probe.returncode != 0:  # e.g. a venv over an interpreter under /root (mode 0700)
        pytest.skip(f"this Python cannot run as user nobody: {probe.stderr.strip().splitlines()[-1:]}")
    top = tempfile.mkdtemp(prefix="lazylayer-user-")  # (pytest's tmp_path is not reachable by others)
    try:
        os.chmod(top, 0o777)
        where = os.path.join(top, "mnt")
        os.makedirs(where)
        os.chown(where, 65534, 65534)
        script = (f"import lazylayer, os\n"
                  f"with lazylayer.Mount({small.ref!r}, {where!r}, cache=lazylayer.DiskCache({top + '/c'!r})):\n"
                  f"    print(open(os.path.join({where!r}, 'data/small.txt')).read(), end='')\n"
                  f"    print(open('/proc/self/mountinfo').read().count(' fuse.lazylayer '))\n")
        res = subprocess.run(user + ["-c", script], capture_output=True, text=True, timeout=120, cwd=top,
                             env=dict(os.environ, HOME=top))
    finally:
        if mount.is_mounted(os.path.join(top, "mnt")):
            subprocess.run(["umount", "-l", os.path.join(top, "mnt")])
        shutil.rmtree(top, ignore_errors=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0] == "hello from the mount"
    assert int(res.stdout.splitlines()[1]) >= 1


def test_a_dead_fetcher_is_eio_for_misses_and_cached_reads_go_on(small: Small, tmp_path: Any) -> None:
    """If the fetcher process dies, reads that need a fetch get EIO at once (no hang), logged, and
    reads of frames already cached keep working."""
    import lazylayer

    where = str(tmp_path / "mnt")
    os.makedirs(where)
    before = _fetchers()
    log_r, log_w = os.pipe()
    try:
        with lazylayer.Mount(small.ref, where, cache=lazylayer.DiskCache(str(tmp_path / "cache")), prefetch=None,
                             readahead=False, log_fd=log_w,
                             memory_cache=lazylayer.BlockCache(64 << 20)) as m:  # (not this process's)
            with open(os.path.join(where, "data/small.txt"), "rb") as f:
                assert f.read() == b"hello from the mount\n"
            (pid,) = _fetchers() - before
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while pid in _fetchers() and time.monotonic() < deadline:  # (gone, or a zombie: no cmdline)
                time.sleep(0.01)
            with pytest.raises(OSError) as info:
                with open(os.path.join(where, "data/blob.bin"), "rb") as f:
                    f.read()
            assert info.value.errno == errno.EIO
            with open(os.path.join(where, "data/small.txt"), "rb") as f:  # page cache dropped? still served
                assert f.read() == b"hello from the mount\n"
            assert m.stats()["eio"] >= 1
    finally:
        os.close(log_w)
        with os.fdopen(log_r) as r:
            logged = r.read()
    assert "EIO: read of" in logged and "/data/blob.bin" in logged, logged


def test_passthrough_serves_a_cached_file_from_a_checked_decoded_copy(small: Small, tmp_path: Any) -> None:
    """``passthrough=True`` (Linux >= 6.9, root): a file whose frames are all cached is decoded into
    the disk cache and handed to the kernel, which reads it with no READ to the server; a copy that
    no longer matches the sha256 in its xattr is made again, never served."""
    import lazylayer

    cache = lazylayer.DiskCache(str(tmp_path / "cache"))
    where = str(tmp_path / "mnt")
    os.makedirs(where)
    blob = os.path.join(where, "data/blob.bin")
    memory = lazylayer.BlockCache(64 << 20)  # not this process's default one: earlier tests filled it
    with lazylayer.Mount(small.ref, where, cache=cache, passthrough=True, memory_cache=memory) as m:
        with open(blob, "rb") as f:  # frames not cached yet: served the usual way, and cached
            assert f.read() == small.blob
        assert m.stats()["passthrough"] == 0
    for attempt in ("made", "reused", "remade"):
        with lazylayer.Mount(small.ref, where, cache=cache, passthrough=True, log_fd=None,
                             memory_cache=lazylayer.BlockCache(64 << 20)) as m:
            before = m.stats()
            with open(blob, "rb") as f:
                assert f.read() == small.blob
            after = m.stats()
            if after["passthrough"] == 0:
                pytest.skip("the kernel refused FUSE passthrough here (needs Linux >= 6.9 and CAP_SYS_ADMIN)")
            assert after["reads"] == before["reads"], (attempt, before, after)  # the kernel read the copy
        copies = [n for n in os.listdir(cache.files_dir) if n.startswith("content-")]
        assert len(copies) == 1
        path = os.path.join(cache.files_dir, copies[0])
        assert os.getxattr(path, "user.lazylayer.sha256").decode() == hashlib.sha256(small.blob).hexdigest()
        if attempt == "reused":  # damage the copy (its xattr still names the right content)
            with open(path, "r+b") as f:
                f.seek(12345)
                byte = f.read(1)
                f.seek(12345)
                f.write(bytes([byte[0] ^ 1]))
