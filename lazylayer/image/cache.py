"""The on-disk chunk cache: content-addressed, bounded, shared by many processes.

A lazy layer is read as zstd frames, each named by the sha256 of its
compressed bytes.  :class:`DiskCache` keeps the frames readers fetched, so a
frame that appears in several layers, images or processes is fetched once,
and it keeps big derived files (a layer re-encoded locally, say) built once.

Layout, under ``<path>/v1/`` (``path`` defaults to :func:`default_cache_dir`)::

    frames/<2 hex>/<64 hex>   one frame, named by its sha256
    frames/<2 hex>/<64 hex>.z a raw layer's frame kept encoded, as fetched, named by the
                              sha256 of its data (put_encoded; docs/cache.md, "Encoded frames")
    files/<name>              big derived files (ensure_file)
    tmp/                      files being written; renamed into place when complete
    locks/<name>              one empty lock file per derived file name (never removed)
    lock                      fetch single-flight: one byte-range lock per slot
    trim.lock                 one trimmer at a time

Guarantees, and how they are kept:

- **Never wrong bytes.**  Everything is written to a temporary file in
  ``tmp/`` and renamed into place (atomic on POSIX), so a reader sees a whole
  file or none; a process killed mid-write leaves only a temporary file, which
  :meth:`DiskCache.trim` removes once it is an hour old.  :meth:`DiskCache.get`
  hashes what it read anyway (disks, crashes without fsync and people do
  corrupt files): a mismatch deletes the entry and reads as a miss.
- **One fetch per frame**, across threads and processes
  (:meth:`DiskCache.fetch_many`).  Each digest maps to one of
  :data:`LOCK_SLOTS` slots; a slot is one byte of the file ``lock``, locked
  with ``fcntl.lockf`` (a POSIX record lock).  Record locks belong to the
  *process*: they do not exclude the threads of one process, and closing
  *any* descriptor of the file drops all of the process's locks on it.  So
  each process opens ``lock`` once per cache directory (module state, reset
  after ``fork``) and never closes it, and each slot also has an in-process
  :class:`threading.Lock`, taken first.  Slots are taken in ascending order,
  without duplicates, so there is no deadlock; they are released record lock
  first, thread lock second (the other order would let a second thread's
  record lock be dropped by the first thread's unlock).  Linux's deadlock
  detector sees processes, not threads: it reports ``EDEADLK`` when process A
  waits for B while another thread of B waits for A, though each holder will
  finish on its own.  Given the ordering that is always such a false alarm,
  so the lock is simply asked for again.
  The kernel releases a dead process's record locks: a crashed fetcher never
  blocks the others.
- **Eviction never removes what is in use.**  Whoever uses a file holds a
  ``flock`` on it: ``get`` a shared one while it reads, a :class:`Pin` a
  shared one while held, a writer an exclusive one on its temporary file.
  :meth:`DiskCache.trim` removes a file only after taking
  ``flock(LOCK_EX | LOCK_NB)`` on it, and skips it if that fails.  A reader
  that opened a file just before it was unlinked still reads the complete,
  intact file (the inode lives while it is open).
- **Bounded.**  Entries are evicted least recently used first (``get``,
  ``pin`` and ``ensure_file`` refresh a file's mtime).  A process checks the
  total after every ``max_bytes / 16`` bytes it has put and, if that is within
  ``max_bytes / 16`` of the limit, trims down to 90 % of it; so a single
  writer leaves the cache within its limit after each ``put``, and N
  writing processes exceed it by at most about ``(N - 1) * max_bytes / 16``
  between their checks.  Files in use
  are never evicted, so they can keep the cache above its limit.  Sizes are
  file sizes (``st_size``), not allocated blocks.

Entries are not fsynced: after a power loss an entry may be empty or garbage,
which ``get`` detects.  The cache is private to one user (directories 0700).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import itertools
import logging
import os
import re
import stat
import threading
import time
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator, Sequence

from .. import errors
from ..units import parse_size

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "LOCK_SLOTS",
    "CacheError",
    "CacheUsage",
    "DiskCache",
    "Pin",
    "default_cache_dir",
    "parse_size",
]

DEFAULT_MAX_BYTES = 10 << 30  #: default bound on the cache's size; env LAZYLAYER_CACHE_MAX overrides it
LOCK_SLOTS = 65536  #: fetch single-flight slots (bytes of the lock file)
TEMP_MAX_AGE = 3600.0  #: seconds after which trim removes an unlocked temporary file
LAYOUT = "v1"
ENCODED_SUFFIX = ".z"  #: an encoded frame's file name: its data's sha256, then this

_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
_NAME = re.compile(r"[A-Za-z0-9._-]{1,200}")


_TEMP_NAMES = itertools.count()


class CacheError(errors.LazyLayerError, OSError):
    """The cache directory cannot be created, written or locked (the path is in the message)."""


def default_cache_dir() -> str:
    """$LAZYLAYER_CACHE_DIR, else $XDG_CACHE_HOME/lazylayer, else ~/.cache/lazylayer."""
    if os.environ.get("LAZYLAYER_CACHE_DIR"):
        return os.environ["LAZYLAYER_CACHE_DIR"]
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if os.path.isabs(xdg):  # the XDG spec says relative values are to be ignored
        return os.path.join(xdg, "lazylayer")
    return os.path.join(os.path.expanduser("~"), ".cache", "lazylayer")


def _default_max_bytes() -> int:
    text = os.environ.get("LAZYLAYER_CACHE_MAX", "").strip()
    if not text:
        return DEFAULT_MAX_BYTES
    try:
        return parse_size(text)
    except ValueError as exc:
        raise ValueError(f"LAZYLAYER_CACHE_MAX: {exc}") from None


def _hex(digest: str) -> str:
    m = _DIGEST.fullmatch(digest) if isinstance(digest, str) else None
    if not m:
        raise ValueError(f"not a sha256 digest: {digest!r} (expected 'sha256:' and 64 lowercase hex digits)")
    return m.group(1)


def _cache_error(exc: OSError, what: str, path: str) -> CacheError:
    return CacheError(exc.errno or errno.EIO, f"disk cache: cannot {what} {path}: {exc.strerror or exc}")


@dataclass(frozen=True)
class CacheUsage:
    """What a cache directory holds: ``entries`` frames and ``files`` big files, ``bytes`` in all."""

    path: str
    bytes: int
    entries: int
    files: int
    max_bytes: int


# ------------------------------------------------------------ per-process lock state


class _Shared:
    """The lock file's one descriptor in this process, and the in-process slot locks.

    One per cache directory per process: a second descriptor of the lock file,
    once closed, would drop every record lock this process holds on it.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.guard = threading.Lock()
        self.slots: dict[int, list] = {}  # slot -> [Lock, holders and waiters]; dropped at 0: bounded memory
        self.pending = 0  # bytes put since the last size check (put's automatic trim)


_registry_guard = threading.Lock()
_registry: dict[tuple[int, int], _Shared] = {}  # (st_dev, st_ino) of the lock file


def _after_fork_in_child() -> None:
    """Forget the parent's locks: the child holds none of its record locks, and
    its thread locks may have been held by threads that do not exist here."""
    global _registry_guard, _registry
    for shared in _registry.values():
        try:
            os.close(shared.fd)  # drops only this (child) process's record locks: it has none
        except OSError:
            pass
    _registry_guard = threading.Lock()
    _registry = {}


os.register_at_fork(after_in_child=_after_fork_in_child)


def _shared_for(lock_path: str) -> _Shared:
    with _registry_guard:
        try:
            st = os.stat(lock_path)  # stat, not open: opening and closing would drop our locks
            shared = _registry.get((st.st_dev, st.st_ino))
            if shared is not None:  # (we hold its inode open: its number cannot be reused)
                return shared
        except FileNotFoundError:
            pass
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise _cache_error(exc, "open the lock file", lock_path) from None
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        if key in _registry:  # (only if the file was swapped between stat and open) leave fd open:
            return _registry[key]  # closing it would drop this process's record locks on the file
        _registry[key] = shared = _Shared(fd)
        return shared


def _write_all(fd: int, parts: Sequence[bytes | bytearray | memoryview]) -> None:
    """Write ``parts`` to ``fd`` whole: one ``writev`` unless it writes less."""
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    while views:
        n = os.writev(fd, views)
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if views and n:
            views[0] = views[0][n:]


def _lockf_wait(fd: int, slot: int) -> None:
    """lockf(LOCK_EX) on one byte; EDEADLK is a false alarm here (see the module doc): ask again."""
    delay = 0.001
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX, 1, slot, os.SEEK_SET)
            return
        except OSError as exc:
            if exc.errno != errno.EDEADLK:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _try_lock_ex(path: str, *, max_mtime: float | None = None) -> int | None:
    """An fd of `path` with flock(LOCK_EX) held, or None if it is gone, in use, or
    (with max_mtime) was used after max_mtime."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if max_mtime is not None and os.fstat(fd).st_mtime > max_mtime:
            raise BlockingIOError  # touched since it was listed: no longer the least recently used
        return fd
    except OSError:
        os.close(fd)
        return None


def _same_file(fd: int, path: str) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _touch(fd: int) -> None:
    try:
        os.utime(fd)  # recently used, for LRU eviction
    except OSError:
        pass  # e.g. a read-only copy of a cache: still usable for reading


# ---------------------------------------------------------------------- the cache


class Pin:
    """Keeps one file of a :class:`DiskCache` from being evicted until closed.

    Holds the file open with ``flock(LOCK_SH)``; trim skips files it cannot
    lock exclusively.  ``fileno()`` is that descriptor (reading through it is
    fine).  Close it, or use it as a context manager.
    """

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def fileno(self) -> int:
        if self._fd is None:
            raise ValueError("pin is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd is None

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # releases the flock

    def __enter__(self) -> Pin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"Pin({self.path!r}{', closed' if self.closed else ''})"


class DiskCache:
    """A directory of frames (by sha256) and derived files, shared by every process that opens it.

    ``path`` defaults to :func:`default_cache_dir`; ``max_bytes`` to
    ``$LAZYLAYER_CACHE_MAX`` or :data:`DEFAULT_MAX_BYTES`.  The directory is
    created (mode 0700) here; :class:`CacheError` says which path if it cannot
    be.  ``create=False`` (for looking only: :meth:`usage`, :meth:`trim`,
    :meth:`clear`) leaves a missing directory missing, an empty cache.
    Instances are thread-safe; any number of processes may use the same
    directory at once.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, max_bytes: int | None = None, *,
                 create: bool = True) -> None:
        self.path = os.path.abspath(os.fspath(path) if path is not None else default_cache_dir())
        self.max_bytes = _default_max_bytes() if max_bytes is None else int(max_bytes)
        if self.max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, not {max_bytes}")
        self._root = os.path.join(self.path, LAYOUT)
        self._frames = os.path.join(self._root, "frames")
        self._files = os.path.join(self._root, "files")
        self._tmp = os.path.join(self._root, "tmp")
        self._locks = os.path.join(self._root, "locks")
        self._lock_path = os.path.join(self._root, "lock")
        if create or os.path.isdir(self._root):
            self._make_dirs()
            _shared_for(self._lock_path)  # fail now, with the path, if it cannot be created
        else:
            try:
                if not stat.S_ISDIR(os.stat(self.path).st_mode):
                    raise CacheError(errno.ENOTDIR, f"disk cache: {self.path} is not a directory")
            except FileNotFoundError:
                pass  # not made yet: an empty cache
            except CacheError:
                raise
            except OSError as exc:  # a parent that is a file, no permission
                raise _cache_error(exc, "use", self.path) from None
        self._stats_lock = threading.Lock()
        self._stats = {"hits": 0, "misses": 0, "fetched": 0, "corrupt": 0, "evicted": 0}

    def __repr__(self) -> str:
        return f"DiskCache({self.path!r}, max_bytes={self.max_bytes})"

    def _make_dirs(self) -> None:
        for d in (self.path, self._frames, self._files, self._tmp, self._locks):
            try:
                os.makedirs(d, mode=0o700, exist_ok=True)
            except OSError as exc:
                raise _cache_error(exc, "create the cache directory", d) from None
            if not os.access(d, os.W_OK | os.X_OK):
                raise CacheError(errno.EACCES, f"disk cache: cannot write to {d}")

    def _count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self._stats[key] += n

    def _entry_path(self, digest: str) -> str:
        h = _hex(digest)
        return os.path.join(self._frames, h[:2], h)

    # ----------------------------------------------------------------- frames

    def get(self, digest: str) -> bytes | None:
        """The bytes stored for ``digest`` ("sha256:<hex>"), or None on a miss.

        What was read is hashed: a corrupt or truncated entry is deleted,
        counted (``stats()["corrupt"]``) and reads as a miss.
        """
        data = self._read(digest)
        self._count("hits" if data is not None else "misses")
        return data

    def has(self, digest: str) -> bool:
        """True if an entry for ``digest`` is stored, as its data or encoded (not checked:
        :meth:`get` checks what it reads)."""
        path = self._entry_path(digest)
        return os.path.exists(path) or os.path.exists(path + ENCODED_SUFFIX)

    def _read(self, digest: str) -> bytes | None:
        path = self._entry_path(digest)
        encoded = False
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            path += ENCODED_SUFFIX  # kept encoded, as fetched (put_encoded)?
            encoded = True
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return None
            except OSError as exc:
                log.warning("disk cache: cannot open %s: %s", path, exc)
                return None
        except OSError as exc:
            log.warning("disk cache: cannot open %s: %s", path, exc)
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH)  # trim skips what we hold
                with open(fd, "rb", buffering=0, closefd=False) as f:
                    data = f.read()
            except OSError as exc:  # EIO, a directory where a file should be...: a miss, not a crash
                log.warning("disk cache: cannot read %s: %s", path, exc)
                return None
            if encoded:
                from ..core import chunk

                try:
                    data = chunk.decode(data, _hex(digest))
                except (errors.LazyLayerError, MemoryError) as exc:
                    data = None
                    why = str(exc)
                if data is not None:
                    _touch(fd)
                    return data
            elif hashlib.sha256(data).hexdigest() == _hex(digest):
                _touch(fd)
                return data
            else:
                why = "does not match its digest"
            self._count("corrupt")
            log.warning("disk cache: %s %s; removed", path, why)
            try:  # only if nobody else reads it, and only if it is still this file
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if _same_file(fd, path):
                    os.unlink(path)
            except OSError:
                pass
            return None
        finally:
            os.close(fd)

    def put(self, digest: str, data: bytes | bytearray | memoryview) -> None:
        """Store ``data`` as the entry for ``digest`` (not re-hashed: the caller verified it).

        Atomic: written to a temporary file and renamed into place.  Nothing is
        written if the entry exists.  May trim the cache (see the module doc).
        """
        path = self._entry_path(digest)
        if os.path.exists(path):
            return
        self._write(path, [data], ours=True)
        self._maybe_trim(memoryview(data).nbytes)

    def put_encoded(self, digest: str, parts: Sequence[bytes | bytearray | memoryview]) -> None:
        """Store a raw layer's frame as it was fetched: ``parts`` (:func:`lazylayer.core.chunk.header`,
        then the compressed bytes) are its encoded form, kept beside where its data would be and
        decoded and checked against ``digest`` when read (by :meth:`get` or the C reader).  Not
        checked here: wrong bytes fail their check when read and are removed then.  Nothing is
        written if the entry exists in either form.  May trim the cache."""
        path = self._entry_path(digest)
        if os.path.exists(path) or os.path.exists(path + ENCODED_SUFFIX):
            return

        self._write(path + ENCODED_SUFFIX, parts, ours=True)
        self._maybe_trim(sum(memoryview(p).nbytes for p in parts))

    def _write(self, path: str, fill: Callable[[BinaryIO], object] | Sequence[bytes | bytearray | memoryview], *,
               ours: bool) -> None:
        """Fill a temporary file, then rename it to ``path``; on any failure remove it.

        ``fill``: a function that writes to the file, or the bytes to write (written by
        ``writev`` without a file object: frames are stored by thousands).  OSErrors of the
        cache's own operations become :class:`CacheError` (with the path); those of ``fill``
        too when ``ours``, else they propagate as raised.
        """
        # A name of our own (pid, thread, counter: unique while we run; O_EXCL all the same), not
        # tempfile.mkstemp's random one: a chunked layer's small chunks are stored by thousands.
        tmp = os.path.join(self._tmp, f".w-{os.getpid()}-{threading.get_ident()}-{next(_TEMP_NAMES)}")
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            try:
                fd = os.open(tmp, flags, 0o600)
            except FileNotFoundError:  # the tree was removed under us: make it again
                self._make_dirs()
                fd = os.open(tmp, flags, 0o600)
        except OSError as exc:
            raise _cache_error(exc, "create a temporary file in", self._tmp) from None
        renamed = False
        try:
            with open(fd, "w+b") as f:
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # not a stale temporary file: trim skips it
                except OSError as exc:
                    raise _cache_error(exc, "lock", tmp) from None
                try:
                    if callable(fill):
                        fill(f)
                    else:
                        _write_all(f.fileno(), fill)
                except OSError as exc:
                    if ours and not isinstance(exc, errors.LazyLayerError):
                        raise _cache_error(exc, "write", tmp) from None
                    raise
                try:
                    f.flush()
                    try:
                        os.rename(tmp, path)
                    except FileNotFoundError:  # the fan-out directory does not exist yet
                        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
                        os.rename(tmp, path)
                    renamed = True
                except OSError as exc:
                    raise _cache_error(exc, "write", path) from None
        except BaseException:
            if not renamed:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
            raise

    def fetch_many(self, digests: Sequence[str], fetch: Callable[[list[int]], Sequence[bytes]], *,
                   store: bool = True) -> list[bytes]:
        """The bytes of every digest, in order: hits from disk, misses fetched once.

        ``fetch(indices)`` gets the indices into ``digests`` of the frames still
        missing once this process holds their locks (one index per distinct
        digest) and returns their verified bytes in the same order.  It is
        called at most once, and never for a digest another thread or process
        is fetching: that one's result is read from disk instead.  Its
        exceptions propagate unchanged, locks released.  ``fetch`` must not
        call ``fetch_many`` on this cache for the same digests.  The bytes are
        returned even if storing them fails (logged).  ``store=False``: ``fetch``
        stores them itself (:meth:`put_encoded`), while it holds the locks.
        """
        digests = list(digests)
        out: list[bytes | None] = [None] * len(digests)
        first: dict[str, int] = {}
        for i, d in enumerate(digests):
            _hex(d)
            first.setdefault(d, i)
        missing: list[str] = []
        for d, i in first.items():
            out[i] = self._read(d)
            if out[i] is None:
                missing.append(d)
        self._count("hits", len(first) - len(missing))
        if missing:
            with self._slot_locks(sorted({self._slot(d) for d in missing})):
                still = []
                for d in missing:  # another process may have fetched it while we waited
                    out[first[d]] = self._read(d)
                    if out[first[d]] is None:
                        still.append(first[d])
                self._count("hits", len(missing) - len(still))
                self._count("misses", len(still))
                if still:
                    got = fetch(still)
                    if len(got) != len(still):
                        raise ValueError(f"fetch returned {len(got)} results for {len(still)} indices")
                    self._count("fetched", len(still))
                    for i, data in zip(still, got):
                        out[i] = data if isinstance(data, bytes) else bytes(data)
                        if not store:
                            continue
                        try:
                            self.put(digests[i], data)
                        except OSError as exc:  # a full disk must not fail the read
                            log.warning("disk cache: not stored: %s", exc)
        return [x if x is not None else out[first[d]] for x, d in zip(out, digests)]  # type: ignore[misc]

    def fill_many(self, digests: Sequence[str], store: Callable[[list[int], Callable[[int], None]], None]) -> list[int]:
        """Make sure an entry exists for every digest, without reading any: ``store(indices, stored)``
        gets the indices of those missing once this process holds their locks (as :meth:`fetch_many`:
        at most once, never for a digest another thread or process is fetching), stores them itself
        (:meth:`put` or :meth:`put_encoded`) and calls ``stored(i)`` as each one is in place, which
        lets a reader waiting for that digest go on at once instead of when the whole batch is in (a
        prefetch's first frames are often the next ones read).  Returns those indices.  For fetching
        ahead, where what is stored need not be read now."""
        first: dict[str, int] = {}
        for i, d in enumerate(digests):
            _hex(d)
            first.setdefault(d, i)
        missing = [d for d in first if not self.has(d)]
        if not missing:
            return []
        with self._slot_locks(sorted({self._slot(d) for d in missing})) as held:
            still = [first[d] for d in missing if not self.has(d)]
            waiting: dict[int, set[int]] = {}  # slot -> the indices still to be stored under it
            for i in still:
                waiting.setdefault(self._slot(digests[i]), set()).add(i)
            for slot in [slot for slot, _ in held.held if slot not in waiting]:
                held.release(slot)

            def stored(i: int) -> None:
                slot = self._slot(digests[i])
                left = waiting.get(slot)
                if left is not None and i in left:
                    left.discard(i)
                    if not left:
                        held.release(slot)

            if still:
                store(still, stored)
                self._count("fetched", len(still))
        return still

    @staticmethod
    def _slot(digest: str) -> int:
        return int(_hex(digest)[:8], 16) % LOCK_SLOTS

    def _slot_locks(self, slots: list[int]) -> _SlotLocks:
        return _SlotLocks(_shared_for(self._lock_path), slots)

    # ----------------------------------------------------------------- files

    @property
    def files_dir(self) -> str:
        """Where big derived files live (counted and trimmed with the frames)."""
        return self._files

    def _file_path(self, name: str) -> str:
        if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name or name.startswith("."):
            raise ValueError(f"bad cache file name: {name!r} (expected [A-Za-z0-9._-], at most 200, "
                             "not starting with '.', no '..')")
        return os.path.join(self._files, name)

    def ensure_file(self, name: str, build: Callable[[BinaryIO], None]) -> str:
        """The path of the complete file ``name``, built by ``build(f)`` if missing.

        ``build`` writes the content into ``f``, a temporary file; it runs once
        across threads and processes (the others wait for it and get its
        result).  If it raises, nothing is left behind and the exception
        propagates.  Take a :meth:`pin` (or use :meth:`ensure_pinned`) to keep
        the file from being evicted while you use it.
        """
        path = self._file_path(name)
        if self._touch_path(path):
            return path
        lock_path = os.path.join(self._locks, name)
        try:
            lock = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            self._make_dirs()
            lock = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise _cache_error(exc, "create the lock file", lock_path) from None
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # flock on our own open file: excludes threads too
            if self._touch_path(path):
                return path
            size = [0]

            def fill(f: BinaryIO) -> None:
                build(f)
                f.flush()
                size[0] = f.tell()

            self._write(path, fill, ours=False)
        finally:
            os.close(lock)
        try:
            with self.pin(path):  # the trim this may start must not evict what we just built
                self._maybe_trim(size[0])
        except FileNotFoundError:
            pass  # cleared by somebody else meanwhile: the caller's pin will say so
        return path

    def read_file(self, name: str) -> bytes | None:
        """The content of file ``name`` (None if there is none), marked as just used."""
        path = self._file_path(name)
        if not self._touch_path(path):
            return None
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:  # evicted in between
            return None

    def remove_file(self, name: str) -> None:
        """Remove file ``name`` (a damaged one, say) if it is there."""
        try:
            os.unlink(self._file_path(name))
        except FileNotFoundError:
            pass

    def ensure_pinned(self, name: str, build: Callable[[BinaryIO], None]) -> Pin:
        """:meth:`ensure_file` and :meth:`pin` without the gap in between where a
        trim could evict the file: retried if it is evicted in that gap."""
        for _ in range(10):
            path = self.ensure_file(name, build)
            try:
                return self.pin(path)
            except FileNotFoundError:
                continue
        raise CacheError(errno.EAGAIN, f"disk cache: {name} keeps being evicted (cache too small?)")

    @staticmethod
    def _touch_path(path: str) -> bool:
        try:
            os.utime(path)
            return True
        except FileNotFoundError:
            return False
        except OSError:
            return os.path.exists(path)

    def pin(self, path: str) -> Pin:
        """Keep the file at ``path``, a file of this cache, from being evicted until the pin is closed.

        Raises FileNotFoundError if it is gone (evicted meanwhile, say).
        """
        full = os.path.abspath(path)
        if os.path.commonpath([full, self._root]) != self._root:
            raise ValueError(f"{path} is not a file of the cache at {self.path}")
        for _ in range(10):
            fd = os.open(full, os.O_RDONLY | os.O_CLOEXEC)
            try:
                fcntl.flock(fd, fcntl.LOCK_SH)
                if _same_file(fd, full):  # not unlinked (or replaced) before we locked it
                    _touch(fd)
                    return Pin(full, fd)
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        raise FileNotFoundError(errno.ENOENT, "cache file keeps being replaced", full)

    # ----------------------------------------------------------------- size

    def _scan(self) -> Iterator[tuple[float, int, str]]:
        """(mtime, size, path) of every frame and file."""
        for top, fanout in ((self._frames, True), (self._files, False)):
            try:
                dirs = [e.path for e in os.scandir(top) if e.is_dir(follow_symlinks=False)] if fanout else [top]
            except FileNotFoundError:
                continue
            for d in dirs:
                try:
                    it = os.scandir(d)
                except FileNotFoundError:
                    continue
                with it:
                    for e in it:
                        try:
                            st = e.stat(follow_symlinks=False)
                        except FileNotFoundError:
                            continue
                        # a sparse file (an erofs data file) counts the blocks it holds
                        yield st.st_mtime, min(st.st_size, st.st_blocks * 512), e.path

    def usage(self) -> CacheUsage:
        """How much the cache holds now (a walk of the directory)."""
        total = entries = files = 0
        for _, size, path in self._scan():
            total += size
            if path.startswith(self._files + os.sep):
                files += 1
            else:
                entries += 1
        return CacheUsage(self.path, total, entries, files, self.max_bytes)

    def _maybe_trim(self, added: int) -> None:
        shared = _shared_for(self._lock_path)
        with shared.guard:
            shared.pending += added
            if shared.pending <= self.max_bytes // 16:
                return
            shared.pending = 0
        # trim when the next max_bytes / 16 could cross the limit: then a lone writer never does
        self._trim(int(self.max_bytes * 0.9), only_above=self.max_bytes - self.max_bytes // 16)

    def trim(self, max_bytes: int | None = None) -> int:
        """Evict least recently used frames and files until the cache holds at most
        ``max_bytes`` (default: ``self.max_bytes``); returns the bytes freed.

        Files in use (being read by ``get``, pinned) are skipped, so the result
        may stay above ``max_bytes``.  Temporary files over an hour old are
        removed too (and counted).  If another process is trimming, returns 0
        at once.
        """
        target = self.max_bytes if max_bytes is None else int(max_bytes)
        if target < 0:
            raise ValueError(f"max_bytes must be >= 0, not {max_bytes}")
        return self._trim(target, only_above=target)

    def clear(self) -> int:
        """Remove every frame and file not in use; returns the bytes freed."""
        return self.trim(0)

    def _trim(self, target: int, only_above: int) -> int:
        if not os.path.isdir(self._root):  # DiskCache(create=False) of a missing directory: nothing to trim
            return 0
        lock_path = os.path.join(self._root, "trim.lock")
        try:
            lock = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise _cache_error(exc, "create the lock file", lock_path) from None
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0  # somebody else is trimming
            freed = self._remove_stale_temps()
            items = list(self._scan())
            total = sum(size for _, size, _ in items)
            if total <= only_above:
                return freed
            items.sort()
            evicted = 0
            for mtime, size, path in items:
                if total <= target:
                    break
                fd = _try_lock_ex(path, max_mtime=mtime)
                if fd is None:
                    continue  # in use, recently used, or gone
                try:
                    if _same_file(fd, path):
                        os.unlink(path)
                        total -= size
                        freed += size
                        evicted += 1
                except OSError:
                    pass
                finally:
                    os.close(fd)
            self._count("evicted", evicted)
            return freed
        finally:
            os.close(lock)

    def _remove_stale_temps(self) -> int:
        """Temporary files nobody writes to and over an hour old: left by killed processes."""
        freed = 0
        limit = time.time() - TEMP_MAX_AGE
        try:
            it = os.scandir(self._tmp)
        except FileNotFoundError:
            return 0
        with it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if st.st_mtime > limit:
                    continue
                fd = _try_lock_ex(e.path)
                if fd is None:
                    continue
                try:
                    if _same_file(fd, e.path):
                        os.unlink(e.path)
                        freed += st.st_size
                except OSError:
                    pass
                finally:
                    os.close(fd)
        return freed

    def stats(self) -> dict[str, int]:
        """This object's counters: hits, misses, fetched, corrupt, evicted."""
        with self._stats_lock:
            return dict(self._stats)



class _SlotLocks:
    """Holds the thread lock and the record lock of each slot, taken in ascending order."""

    def __init__(self, shared: _Shared, slots: list[int]) -> None:
        self.shared = shared
        self.slots = slots  # sorted, distinct
        self.held: list[tuple[int, list]] = []

    def __enter__(self) -> _SlotLocks:
        try:
            for slot in self.slots:
                with self.shared.guard:
                    entry = self.shared.slots.get(slot)
                    if entry is None:
                        entry = self.shared.slots[slot] = [threading.Lock(), 0]
                    entry[1] += 1
                try:
                    entry[0].acquire()
                except BaseException:
                    self._drop(slot, entry)
                    raise
                try:
                    _lockf_wait(self.shared.fd, slot)
                except BaseException:
                    entry[0].release()
                    self._drop(slot, entry)
                    raise
                self.held.append((slot, entry))
        except BaseException:
            self.__exit__()
            raise
        return self

    def _drop(self, slot: int, entry: list) -> None:
        with self.shared.guard:
            entry[1] -= 1
            if entry[1] == 0:
                del self.shared.slots[slot]

    def __exit__(self, *exc: object) -> None:
        while self.held:
            self._unlock(*self.held.pop())

    def release(self, slot: int) -> None:
        """Let one slot go before the others (its entry is in place); a slot not held is ignored."""
        for k, (held, entry) in enumerate(self.held):
            if held == slot:
                del self.held[k]
                self._unlock(slot, entry)
                return

    def _unlock(self, slot: int, entry: list) -> None:
        try:
            # record lock first: once the thread lock is free another thread of this
            # process may take the record lock, which our unlock would then drop
            fcntl.lockf(self.shared.fd, fcntl.LOCK_UN, 1, slot, os.SEEK_SET)
        finally:
            entry[0].release()
            self._drop(slot, entry)
