"""The erofs backend (lazylayer.mount.erofs, csrc/erofs.c, csrc/erofsd.c): real EROFS mounts through
mount(2), filled on demand through real fanotify pre-content events, checked by erofs-utils.

Needs root, a kernel with EROFS and fanotify pre-content events (Linux >= 6.14), and a temporary
directory on ext4, xfs or btrfs; skipped otherwise, with the reason."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

import images
import pytest
from servers import RegistryServer, wait_for
from test_mount import Built, Mounted, cli, corrupt_copy

from lazylayer import mount
from lazylayer.core.erofs import BLOCK, ErofsLayout, supervisor_program
from lazylayer.core.seekable import BlockCache
from lazylayer.image import DiskCache, Image
from lazylayer.mount import MountError
from lazylayer.mount.erofs import ErofsMount, unavailable

_WHY = unavailable(tempfile.gettempdir())
pytestmark = [
    pytest.mark.skipif(_WHY is not None, reason=f"no erofs backend here: {_WHY}"),
    pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci is not installed (apt install umoci)"),
]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, registry: RegistryServer) -> Built:
    """test_mount's reference image (umoci's three layers and a hand-made fourth), lazy, in the registry."""
    return Built(str(tmp_path_factory.mktemp("erofsimage")), registry)


def _same_as_umoci(root: str, built: Built) -> None:
    got, got_links = images.snapshot(root)
    want, want_links = images.snapshot(built.rootfs)
    assert images.diff_snapshots(got, want) == []
    assert got_links == want_links


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# ---------------------------------------------------------------- the image


@pytest.mark.skipif(shutil.which("fsck.erofs") is None, reason="erofs-utils is not installed (apt install erofs-utils)")
def test_the_image_passes_fsck_erofs_and_lists_like_the_index(built: Built, tmp_path: Any) -> None:
    with Image(f"oci:{built.lazy}:v1", cache=DiskCache(tmp_path / "c")) as img:
        layout = ErofsLayout(img.index, uuid=bytes(range(16)))
        meta = bytes(layout.meta)
        assert len(meta) % BLOCK == 0 and layout.data_size % BLOCK == 0
        (tmp_path / "meta").write_bytes(meta)
        with open(tmp_path / "data", "wb") as f:
            f.truncate(layout.data_size)
            for ino in range(1, img.index.inodes + 1):
                at = layout.file_offset(ino)
                st = img.index.stat(ino)
                if st.kind != "reg" or st.size == 0:
                    assert at is None
                    continue
                assert at is not None and at % BLOCK == 0
                assert layout.extent_at(at) == (ino, 0, st.size)
                assert layout.extent_at(at + st.size - 1) == (ino, st.size - 1, 1)
                if st.size % BLOCK:
                    assert layout.extent_at(at + st.size).ino == 0  # padding to the block's end
                f.seek(at)
                f.write(img.reader.pread(ino, st.size, 0))
        with pytest.raises(ValueError):
            layout.extent_at(layout.data_size)
    out = subprocess.run(["fsck.erofs", f"--device={tmp_path / 'data'}", str(tmp_path / "meta")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    dump = subprocess.run(["dump.erofs", "-s", f"--device={tmp_path / 'data'}", str(tmp_path / "meta")],
                          capture_output=True, text=True)
    assert dump.returncode == 0, dump.stderr
    assert "00010203-0405-0607-0809-0a0b0c0d0e0f" in dump.stdout and "chunked_file device_table" in dump.stdout


def test_the_data_file_holds_files_in_the_order_a_tree_walk_reads_them(built: Built, tmp_path: Any) -> None:
    """Depth first, each directory's entries by name (tar's, cp -r's order on an EROFS mount): filling
    the data file from its start runs ahead of such a reader.  The image's fourth layer adds files to
    directories of the first, which inode order (the layout before) put at the end."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with ErofsMount(f"oci:{built.lazy}:v1", str(mnt), cache=DiskCache(tmp_path / "c")) as m:
        offsets: list[int] = []  # of first-seen regular files with content, as tar -c would read them
        seen: set[int] = set()   # (the kernel's inode numbers: hard links once)

        def walk(d: str) -> None:
            for name in sorted(os.listdir(d), key=os.fsencode):
                p = os.path.join(d, name)
                st = os.lstat(p)
                if os.path.stat.S_ISDIR(st.st_mode):
                    walk(p)
                elif os.path.stat.S_ISREG(st.st_mode) and st.st_size and st.st_ino not in seen:
                    seen.add(st.st_ino)
                    node = m.image.tree.resolve("/" + os.path.relpath(p, mnt))  # (the index's inode)
                    offsets.append(m.layout.file_offset(node.inode.ino))

        walk(str(mnt))
    assert len(offsets) > 10
    assert offsets == sorted(offsets)


def test_an_xattr_erofs_cannot_hold_is_a_limit_error(tmp_path: Any) -> None:
    tar = images.make_tar([images.reg("f", b"x")])
    info, data = images.reg("g", b"y")
    info.pax_headers = {"SCHILY.xattr.system.foo": "bar"}
    tar = images.make_tar([images.reg("f", b"x"), (info, data)])
    src = images.build_layout(str(tmp_path / "src"), [tar], "v1")
    from lazylayer import errors
    from lazylayer.convert import Converter
    Converter(progress=False).convert(src, f"oci:{tmp_path / 'lazy'}:v1")
    with Image(f"oci:{tmp_path / 'lazy'}:v1", cache=None) as img:
        with pytest.raises(errors.LimitError, match="system.foo"):
            ErofsLayout(img.index)


# ---------------------------------------------------------------- mounts


def test_a_lazy_mount_matches_umoci_unpack_and_a_second_one_needs_no_fill(built: Built, tmp_path: Any) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cache = DiskCache(tmp_path / "cache")
    # (a memory cache of its own: the process-wide one may hold frames other tests read)
    with Image(built.ref, cache=cache, memory_cache=BlockCache(16 << 20)) as img:
        with ErofsMount(img, str(mnt)) as m:
            assert os.statvfs(mnt).f_flag & os.ST_RDONLY
            with open("/proc/self/mountinfo") as f:
                assert any(line.split()[4] == str(mnt) and " erofs " in line for line in f)
            before = m.stats()
            assert before["fill_events"] == 0 and before["frames_fetched"] == 0  # stat, readdir: no events
            _same_as_umoci(str(mnt), built)
            s = m.stats()
            assert s["fill_events"] > 0 and s["frames_fetched"] > 0 and s["fill_errors"] == 0
            with pytest.raises(OSError) as info:
                open(mnt / "etc/new", "w")
            assert info.value.errno == errno.EROFS
        assert not os.path.ismount(mnt)
        assert os.path.exists(m.filled_path)  # the supervisor's bitmap, left at its clean stop
    with Image(built.ref, cache=DiskCache(tmp_path / "cache"), memory_cache=BlockCache(16 << 20)) as img:
        with ErofsMount(img, str(mnt)) as m:
            _same_as_umoci(str(mnt), built)
            assert m.stats()["fill_events"] == 0  # every block filled last time, and known to be
            assert m.stats()["frames_fetched"] == 0


def test_the_data_file_counts_what_it_holds_and_is_pinned_while_mounted(built: Built, tmp_path: Any) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cache = DiskCache(tmp_path / "c")
    with ErofsMount(f"oci:{built.lazy}:v1", str(mnt), cache=cache) as m:
        assert (mnt / "etc/passwd").read_bytes() == open(os.path.join(built.rootfs, "etc/passwd"), "rb").read()
        st = os.stat(m.data_path)
        held = st.st_blocks * 512
        assert 0 < held < st.st_size  # sparse: one window filled
        assert cache.usage().bytes >= held
        cache.trim(0)  # evicts everything it can: not what a mount uses
        assert os.path.exists(m.data_path) and os.path.exists(m.meta_path)
        assert (mnt / "etc/passwd").read_bytes() == open(os.path.join(built.rootfs, "etc/passwd"), "rb").read()
    cache.trim(0)
    assert not os.path.exists(m.data_path) and not os.path.exists(m.meta_path)


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def test_the_supervisor_is_a_small_program_of_its_own(built: Built, tmp_path: Any) -> None:
    program = supervisor_program()
    assert program is not None, "setup.py builds lazylayer-erofsd beside the extension"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with ErofsMount(f"oci:{built.lazy}:v1", str(mnt), cache=DiskCache(tmp_path / "c")) as m:
        assert (mnt / "etc/passwd").read_bytes() == open(os.path.join(built.rootfs, "etc/passwd"), "rb").read()
        assert os.readlink(f"/proc/{m.pid}/exe") == os.path.realpath(program)
        assert os.getsid(m.pid) == m.pid != os.getsid(0)  # (a session of its own: no terminal's signals)
        rss_kb = int(_status(m.pid)["VmRSS"].split()[0])
        mine_kb = int(_status(os.getpid())["VmRSS"].split()[0])
        assert rss_kb < 8 << 10 < mine_kb, (rss_kb, mine_kb)  # nothing of this process copied
        with open(f"/proc/{m.pid}/environ", "rb") as f:
            assert f.read() == b""
        fds = sorted(int(fd) for fd in os.listdir(f"/proc/{m.pid}/fd"))
        assert len(fds) <= 8, fds  # stdin/out/err, the socket, the group, the two pinned files
    assert not _alive(m.pid)


def test_without_the_program_the_supervisor_is_forked(built: Built, tmp_path: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import lazylayer.mount.erofs as erofs_mod

    monkeypatch.setattr(erofs_mod, "supervisor_program", lambda: None)  # (an extension built without setup.py)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with ErofsMount(f"oci:{built.lazy}:v1", str(mnt), cache=DiskCache(tmp_path / "c")) as m:
        assert os.readlink(f"/proc/{m.pid}/exe") == os.readlink("/proc/self/exe")
        _same_as_umoci(str(mnt), built)
    assert not _alive(m.pid)


def test_a_damaged_metadata_image_is_built_again(built: Built, tmp_path: Any,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    ref = f"oci:{built.lazy}:v1"
    with ErofsMount(ref, str(mnt), cache=DiskCache(tmp_path / "c")) as m:
        meta_path = m.meta_path
    good = open(meta_path, "rb").read()
    # one bit flipped in the root directory's inode (block 1), size and name unchanged: the supervisor
    # finds it against the kept checksum before it mounts anything
    bad = bytearray(good)
    bad[4096 + 8] ^= 0x10
    with open(meta_path, "r+b") as f:
        f.write(bad)
    with caplog.at_level("WARNING", logger="lazylayer"):
        with ErofsMount(ref, str(mnt), cache=DiskCache(tmp_path / "c")) as m:
            _same_as_umoci(str(mnt), built)
    assert "does not match its checksum" in caplog.text and "building it again" in caplog.text
    assert open(meta_path, "rb").read() == good
    os.unlink(meta_path[:-len(".meta")] + ".sum")  # no checksum kept: built again, quietly
    with ErofsMount(ref, str(mnt), cache=DiskCache(tmp_path / "c")) as m:
        assert (mnt / "etc/passwd").read_bytes() == open(os.path.join(built.rootfs, "etc/passwd"), "rb").read()
    assert open(meta_path, "rb").read() == good


def test_a_bitmap_left_beside_an_evicted_data_file_is_not_taken_for_a_new_one(built: Built, tmp_path: Any) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    ref, path = f"oci:{built.lazy}:v1", "big/large.bin"
    want = open(os.path.join(built.rootfs, path), "rb").read()
    with ErofsMount(ref, str(mnt), cache=DiskCache(tmp_path / "c")) as m:
        assert (mnt / path).read_bytes() == want
    assert os.path.exists(m.filled_path)
    # The cache evicts its least recently used files one by one: the data file may go while the bitmap
    # written after it stays; the next data file, as sparse and as big, then gets its inode number
    # back (ext4 hands out the one just freed).
    os.unlink(m.data_path)
    # (Before the fix, this read zeros whenever the number came back: nearly always here.)
    with ErofsMount(ref, str(mnt), cache=DiskCache(tmp_path / "c")) as m:
        assert (mnt / path).read_bytes() == want  # fetched again, never the new file's holes
        assert m.stats()["fill_events"] > 0


def test_a_corrupt_frame_is_eio_never_data(built: Built, tmp_path: Any) -> None:
    layout = corrupt_copy(built, str(tmp_path / "bad"))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    want = open(os.path.join(built.rootfs, "big/large.bin"), "rb").read()
    # (a memory cache of its own: the process-wide one may hold the good frame, read by another test)
    with ErofsMount(f"oci:{layout}:v1", str(mnt), cache=DiskCache(tmp_path / "c"),
                    memory_cache=BlockCache(8 << 20)) as m:
        fd = os.open(mnt / "big/large.bin", os.O_RDONLY)
        try:
            assert os.pread(fd, 4096, 0) == want[:4096]
            for _ in range(2):  # and again: not zeros the second time either
                with pytest.raises(OSError) as info:
                    os.pread(fd, 4096, 3 << 20)
                assert info.value.errno == errno.EIO
        finally:
            os.close(fd)
        assert m.stats()["fill_errors"] > 0
        assert open(mnt / "etc/passwd", "rb").read() == open(os.path.join(built.rootfs, "etc/passwd"), "rb").read()


def test_a_cache_on_tmpfs_is_refused_with_the_reason(built: Built, tmp_path: Any) -> None:
    shm = tmp_path / "shm"
    shm.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(shm)], check=True)
    try:
        (tmp_path / "mnt").mkdir()
        with pytest.raises(MountError, match="tmpfs"):
            ErofsMount(f"oci:{built.lazy}:v1", str(tmp_path / "mnt"), cache=DiskCache(shm / "c"))
        assert not os.path.ismount(tmp_path / "mnt")
    finally:
        subprocess.run(["umount", "-l", str(shm)], check=True)  # (the DiskCache object may hold a lock file)


def test_fill_completes_the_data_file_and_then_no_read_raises_an_event(built: Built, tmp_path: Any) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with ErofsMount(built.ref, str(mnt), cache=DiskCache(tmp_path / "c"), prefetch=None, fill=True) as m:
        assert m.ahead_done.wait(60)
        sizes = {}  # content per inode: hard links share theirs
        for d, _, names in os.walk(built.rootfs):
            for n in names:
                st = os.lstat(os.path.join(d, n))
                if os.path.stat.S_ISREG(st.st_mode):
                    sizes[st.st_ino] = st.st_size
        s = m.stats()
        assert s["fill_errors"] == 0 and s["filled_bytes"] == sum(sizes.values())
        events = s["fill_events"]
        assert events <= 1  # (the one this process raised to get a descriptor to fill through)
        _same_as_umoci(str(mnt), built)
        assert m.stats()["fill_events"] == events  # complete: the supervisor took the mark off


def test_a_recorded_plan_is_filled_before_it_is_read(built: Built, tmp_path: Any) -> None:
    from lazylayer.prefetch import Recorder

    wanted = ["etc/passwd", "big/large.bin"]
    with Image(built.ref, cache=DiskCache(tmp_path / "record")) as img:
        rec = Recorder(img)
        img.recorder = rec
        for p in wanted:
            node = img.tree.resolve("/" + p)
            img.pread(node, node.inode.size, 0)
        rec.plan(workload="test").save(tmp_path / "plan.json")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with ErofsMount(built.ref, str(mnt), cache=DiskCache(tmp_path / "c"), prefetch=str(tmp_path / "plan.json")) as m:
        assert m.ahead_done.wait(60)
        s = m.stats()
        # (whether the prefetcher or the filling fetched a frame first is a race: count what was written)
        assert s["filled_bytes"] >= sum(os.path.getsize(os.path.join(built.rootfs, p)) for p in wanted)
        events = s["fill_events"]
        for p in wanted:
            assert (mnt / p).read_bytes() == open(os.path.join(built.rootfs, p), "rb").read()
        assert m.stats()["fill_events"] == events  # every block read was filled ahead


def test_the_command_mounts_and_unmounts_with_the_erofs_backend(built: Built, tmp_path: Any) -> None:
    for backend in ("erofs", "auto"):
        where = tmp_path / f"cli-{backend}"
        m = Mounted(built.ref, str(where), str(tmp_path / "cache"), "--backend", backend)
        try:
            assert mount.is_mounted(str(where))
            assert mount.mount_entry(str(where))["fstype"] == "erofs"  # (auto: this machine allows it)
            assert (where / "etc/passwd").read_bytes() == open(os.path.join(built.rootfs, "etc/passwd"), "rb").read()
            pid = m.pid
        finally:
            m.close()
        assert not mount.is_mounted(str(where)) and not _alive(pid)
        text = m.log_text()
        assert "erofs backend" in text and "fills asked" in text, text  # (auto says so, and why)
    with pytest.raises(AssertionError, match="not a lazylayer mount"):
        cli("umount", str(tmp_path))


# ---------------------------------------------------------------- a daemon that dies

_DAEMON = """
import sys, time
from lazylayer.image import DiskCache
from lazylayer.mount.erofs import ErofsMount
m = ErofsMount(sys.argv[1], sys.argv[2], cache=DiskCache(sys.argv[3]), workers=2)
print(m.pid, flush=True)
time.sleep(3600)
"""


def test_killing_the_daemon_mid_read_never_shows_a_wrong_byte(built: Built, tmp_path: Any) -> None:
    """kill -9 of the filling process at random moments of a read of every file, 50 times: every byte a
    reader gets is the image's (a read the daemon did not fill fails with EIO), and the supervisor
    leaves once the last reader has gone."""
    files = {}
    for dirpath, _, names in os.walk(built.rootfs):
        for name in names:
            p = os.path.join(dirpath, name)
            if os.path.isfile(p) and not os.path.islink(p) and os.path.getsize(p) > 0:
                files[os.path.relpath(p, built.rootfs)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    rng = random.Random(19)
    outcomes = {"ok": 0, "eio": 0, "pending": 0}
    for i in range(50):
        mnt = tmp_path / f"mnt{i}"
        mnt.mkdir()
        daemon = subprocess.Popen([sys.executable, "-c", _DAEMON, built.ref, str(mnt), str(tmp_path / f"c{i}")],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        supervisor = int(daemon.stdout.readline())
        order = sorted(files)
        rng.shuffle(order)
        reader = subprocess.Popen(["sha256sum", "--", *order], cwd=mnt, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0, 0.15))
        daemon.kill()
        daemon.wait()
        out, err = reader.communicate(timeout=60)
        for line in out.splitlines():
            digest, name = line.split(None, 1)
            assert files[name] == digest, f"run {i}: {name} read wrong bytes"
            outcomes["ok"] += 1
        for line in err.splitlines():
            assert "Input/output error" in line, line
            outcomes["eio"] += 1
        assert len(out.splitlines()) + len(err.splitlines()) == len(order)
        wait_for(lambda: not _alive(supervisor), timeout=30)
        assert not os.path.ismount(mnt)
        said = daemon.stderr.read()  # (the supervisor's too; it has gone, so this ends)
        pending = re.search(r"gone: (\d+) pending reads failed", said)
        assert pending, said
        outcomes["pending"] += int(pending.group(1)) > 0
    # both kinds of read happened, and some kills did land while the supervisor had a fill pending
    assert outcomes["ok"] > 0 and outcomes["eio"] > 0 and outcomes["pending"] > 0, outcomes
