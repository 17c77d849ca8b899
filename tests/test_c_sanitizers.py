"""The C library under AddressSanitizer + UBSan: the libFuzzer targets in csrc/fuzz/
(short bounded runs over the seed corpus, and a replay of the regression inputs)
and the docs/examples/read_range.c program built against the library sources.

Project standard: C code that parses untrusted bytes is fuzzed and runs clean
under AddressSanitizer.  Any sanitizer report, failed fuzz invariant or libFuzzer
crash fails these tests.  Longer campaigns: see csrc/fuzz/Makefile.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
FUZZ = CSRC / "fuzz"
# Every library source (as csrc/Makefile's SRCS); they link against libzstd, libcrypto and pthreads.
LIB_SRCS = [str(CSRC / f) for f in ("common.c", "seektable.c", "cache.c", "pool.c", "reader.c", "writer.c", "json.c",
                                    "toc.c", "index.c", "resolve.c", "oci.c", "diskcache.c", "image.c",
                                    "sockhost.c", "fuse.c", "gzindex.c", "erofs.c", "erofsd.c", "chunked.c")]
SAN_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer",
             "-g", "-O1"]
TARGETS = ("seektable", "roundtrip", "toc", "index_load", "manifest", "sockhost", "gzindex", "chunk", "chunked")
FUZZ_SECONDS = 20

# Lines that mean a sanitizer, a fuzz invariant (CHECK in fuzz_common.h) or
# libFuzzer itself found a problem.
REPORT = re.compile(
    r"ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:|FUZZ CHECK FAILED"
    r"|SUMMARY: (AddressSanitizer|UndefinedBehaviorSanitizer|LeakSanitizer|libFuzzer)")


def sanitizer_env() -> dict[str, str]:
    return dict(os.environ,
                ASAN_OPTIONS="abort_on_error=1:detect_leaks=1:allocator_may_return_null=1",
                UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")


def report_in(text: str) -> str | None:
    """The first sanitizer/fuzzer report in `text` with some context, or None."""
    m = REPORT.search(text)
    if not m:
        return None
    start = text.rfind("\n", 0, max(0, m.start() - 2000)) + 1
    return text[start:m.start() + 3000]


@pytest.fixture(scope="module")
def toolchain(tmp_path_factory):
    """clang with libFuzzer and the ASan/UBSan runtimes, or skip saying what is missing."""
    if not shutil.which("clang"):
        pytest.skip("clang is not installed (needed for -fsanitize=fuzzer,address,undefined)")
    if not shutil.which("make"):
        pytest.skip("make is not installed")
    d = tmp_path_factory.mktemp("probe")
    src = d / "probe.c"
    src.write_text("#include <stdint.h>\n#include <stddef.h>\n"
                   "int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n")
    res = subprocess.run(["clang", "-fsanitize=fuzzer,address,undefined", str(src), "-o", str(d / "probe")],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip("clang cannot link -fsanitize=fuzzer,address,undefined (libclang-rt / compiler-rt "
                    f"missing?): {res.stderr.strip()[-500:]}")
    return True


@pytest.fixture(scope="module")
def fuzz_build(toolchain, tmp_path_factory):
    """The fuzz targets and the seed corpora, built from the current sources."""
    build = tmp_path_factory.mktemp("fuzz-build")
    seeds = build / "seeds"
    # LL_FUZZ_EXTRA_CFLAGS passes e.g. -DLL_FUZZ_ALLOW_SHARED_KEY_UNVERIFIED (see csrc/fuzz/Makefile).
    extra = os.environ.get("LL_FUZZ_EXTRA_CFLAGS", "")
    res = subprocess.run(["make", "-s", "-j2", "-C", str(FUZZ), f"BUILD={build}", f"SEEDS={seeds}",
                          f"EXTRA_CFLAGS={extra}", "all"], capture_output=True, text=True)
    assert res.returncode == 0, f"building the fuzz targets failed:\n{res.stdout}\n{res.stderr}"
    res = subprocess.run([str(build / "gen_corpus"), str(seeds)], capture_output=True, text=True,
                         env=sanitizer_env())
    assert res.returncode == 0 and not report_in(res.stderr), res.stderr
    return build, seeds


def test_report_detector_catches_a_real_overflow(toolchain, tmp_path):
    """Guard against vacuous passes: a heap overflow must be seen as a report."""
    src = tmp_path / "bug.c"
    src.write_text("#include <stdlib.h>\nint main(int c, char **v) { (void)v; char *p = malloc(8);"
                   " p[8 + c - 1] = 1; free(p); return 0; }\n")
    subprocess.run(["clang", *SAN_FLAGS, str(src), "-o", str(tmp_path / "bug")], check=True)
    res = subprocess.run([str(tmp_path / "bug")], capture_output=True, text=True, env=sanitizer_env())
    assert res.returncode != 0 and report_in(res.stderr), res.stderr


def test_seed_corpora_are_generated(fuzz_build):
    _, seeds = fuzz_build
    names = {t: sorted(p.name for p in (seeds / t).iterdir()) for t in TARGETS}
    assert sum(n.startswith("valid-") for n in names["seektable"]) >= 10
    hostile = [n for n in names["seektable"] if n.startswith("hostile-")]
    for kind in ("count-huge", "reserved-bit", "frame-size-minus1", "csum-wraps-32", "csize-zero",
                 "dsize-over-1g"):
        assert f"hostile-{kind}" in hostile, kind
    assert len(names["roundtrip"]) >= 10
    assert {"basic", "layers3", "hostile-name"} <= set(names["toc"])
    assert len(names["index_load"]) >= 3 and {"manifest", "index"} <= set(names["manifest"])
    assert {"good-two", "error-then-good", "short", "hangup"} <= set(names["sockhost"])
    assert {"text-level6", "gzip-two-members", "gzip-truncated"} <= set(names["gzindex"])
    assert {"estargz", "zstd-chunked", "hostile-inner"} <= set(names["chunked"])


@pytest.mark.parametrize("target", TARGETS)
def test_replay_seeds_and_regressions(fuzz_build, target):
    """Every seed and every input in csrc/fuzz/corpus-regressions/<target>/ runs clean."""
    build, seeds = fuzz_build
    dirs = [str(seeds / target)]
    reg = FUZZ / "corpus-regressions" / target
    if reg.is_dir() and any(reg.iterdir()):
        dirs.append(str(reg))
    inputs = [p for d in dirs for p in Path(d).iterdir()]
    # Each input on its own so that one failure names its file; -runs=1 per input.
    res = subprocess.run([str(build / f"fuzz_{target}"), "-rss_limit_mb=2048", "-timeout=25", *map(str, inputs)],
                         capture_output=True, text=True, env=sanitizer_env(), timeout=120)
    out = res.stdout + res.stderr
    if report_in(out) or res.returncode != 0:
        running = re.findall(r"^Running: (.*)$", out, re.M)
        pytest.fail(f"fuzz_{target} fails on {running[-1] if running else 'a stored input'} "
                    f"(rc {res.returncode}):\n{report_in(out) or out[-3000:]}", pytrace=False)
    assert len(re.findall(r"^Executed ", out, re.M)) == len(inputs), out[-3000:]


def _dict_for(target: str) -> Path:
    """The target's own libFuzzer dictionary (csrc/fuzz/<target>.dict) or the seekable one."""
    own = FUZZ / f"{target}.dict"
    return own if own.exists() else FUZZ / "seekable.dict"


def _fuzz(build: Path, seeds: Path, work: Path, target: str) -> subprocess.CompletedProcess:
    corpus = work / f"corpus-{target}"
    corpus.mkdir()
    return subprocess.run(
        [str(build / f"fuzz_{target}"), f"-max_total_time={FUZZ_SECONDS}", "-max_len=16384",
         "-rss_limit_mb=2048", "-timeout=25", "-print_final_stats=1", f"-dict={_dict_for(target)}",
         f"-artifact_prefix={work}/{target}-", str(corpus), str(seeds / target)],
        capture_output=True, text=True, env=sanitizer_env(), timeout=FUZZ_SECONDS + 90)


def test_fuzz_targets_short_run(fuzz_build, tmp_path):
    """Every target fuzzes for FUZZ_SECONDS (all at once, sharing the cores) without a report."""
    build, seeds = fuzz_build
    with ThreadPoolExecutor(len(TARGETS)) as ex:
        results = dict(zip(TARGETS, ex.map(lambda t: _fuzz(build, seeds, tmp_path, t), TARGETS)))
    failures = []
    for target, res in results.items():
        out = res.stdout + res.stderr
        rep = report_in(out)
        crashes = sorted(p.name for p in tmp_path.glob(f"{target}-*"))
        if rep or res.returncode != 0 or crashes:
            failures.append(f"fuzz_{target}: rc={res.returncode} artifacts={crashes}\n{rep or out[-3000:]}")
            continue
        # It really fuzzed: the seeds loaded and many inputs ran.
        runs = re.search(r"stat::number_of_executed_units:\s*(\d+)", out)
        assert runs and int(runs.group(1)) > 200, f"fuzz_{target} barely ran:\n{out[-2000:]}"
        assert "INITED" in out, out[-2000:]
    if failures:
        pytest.fail("\n\n".join(failures), pytrace=False)


def _read_range_data() -> bytes:
    rng = random.Random(7)
    words = [b"layer", b"seek", b"frame", b"zstd", b"\n", b"usr/lib/python3/", b"0000644\0"]
    text = b"".join(rng.choice(words) for _ in range(40_000))
    return text + rng.randbytes(50_000) + text[:100_000]


def test_read_range_example_under_asan(toolchain, tmp_path):
    """docs/examples/read_range.c, built with ASan+UBSan against the library sources,
    reads ranges of a pyzstd-written seekable file byte-exactly and runs clean."""
    pyzstd = pytest.importorskip("pyzstd")
    exe = tmp_path / "read_range"
    res = subprocess.run(["clang", "-std=c11", "-D_GNU_SOURCE", "-Wall", *SAN_FLAGS, f"-I{CSRC}",
                          str(ROOT / "docs/examples/read_range.c"), *LIB_SRCS, "-o", str(exe),
                          "-lzstd", "-lcrypto", "-lz", "-lisal", "-lpthread"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    data = _read_range_data()
    blob = tmp_path / "data.zst"
    frame = 4096
    with pyzstd.SeekableZstdFile(blob, "w", max_frame_content_size=frame) as f:
        f.write(data)
    n = len(data)
    cases = [(0, n), (0, 1), (1, frame), (frame - 3, 7), (frame, frame), (5 * frame + 100, 10 * frame + 17),
             (n // 2, 123_457), (n - 10, 10), (n - 5, 100), (n, 10), (n + 1000, 10), (12_345, 0)]
    for off, length in cases:
        res = subprocess.run([str(exe), str(blob), str(off), str(length)], capture_output=True,
                             env=sanitizer_env(), timeout=60)
        err = res.stderr.decode(errors="replace")
        assert not report_in(err), f"read_range {off} {length}:\n{report_in(err)}"
        assert res.returncode == 0, f"read_range {off} {length}: rc {res.returncode}\n{err}"
        want = data[off:off + length]
        assert res.stdout == want, (off, length, len(res.stdout), len(want))
        assert f"read {len(want)} bytes at {off} of {n}".encode() in res.stderr, err


# Frame buffers from the cache's own pool (issue 15, item 10): readers sharing a
# small cache, with and without whole-frame decodes, frames above and below the
# mmap threshold, a reader without a cache, while the budget changes and the
# cache is cleared under them; every byte checked, the free list within its limit.
POOL_STRESS = r"""
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <lazylayer.h>

#define SIZE (6u << 20)
static unsigned char *data;
typedef struct { unsigned char *p; size_t len, cap; } sink;
static int sink_write(void *o, const void *src, size_t n) {
    sink *s = o;
    if (s->len + n > s->cap) { s->cap = (s->len + n) * 2; s->p = realloc(s->p, s->cap); if (!s->p) return 1; }
    memcpy(s->p + s->len, src, n); s->len += n; return 0;
}
static ll_mem_source srcs[3];
static ll_reader *readers[3];
static int failed;

static void *worker(void *arg) {
    unsigned seed = (unsigned)(size_t)arg;
    unsigned char *buf = malloc(1u << 20);
    for (int k = 0; k < 600 && !failed; k++) {
        ll_reader *r = readers[rand_r(&seed) % 3];
        size_t off = rand_r(&seed) % SIZE, len = 1 + rand_r(&seed) % (k % 4 == 0 ? (1u << 20) : (200u << 10));
        int64_t n = ll_reader_read(r, off, buf, len);
        size_t want = off + len > SIZE ? SIZE - off : len;
        if (n != (int64_t)want || memcmp(buf, data + off, want) != 0) {
            printf("FAIL read %zu at %zu: %lld\n", len, off, (long long)n); failed = 1;
        }
    }
    free(buf);
    return NULL;
}

int main(void) {
    data = malloc(SIZE);
    unsigned x = 1;
    for (size_t i = 0; i < SIZE; i += 4096) {
        for (size_t j = 0; j < 2048; j++) { x = x * 1103515245u + 12345u; data[i + j] = (unsigned char)(x >> 16); }
        memset(data + i + 2048, (int)(i >> 12), 2048);
    }
    ll_cache *cache; ll_pool *pool;
    if (ll_cache_create(2u << 20, &cache) || ll_pool_create(2, &pool)) return 2;
    uint32_t frames[3] = {256u << 10, 20u << 10, 300u << 10};
    sink sinks[3] = {{0}};
    for (int i = 0; i < 3; i++) {
        ll_writer_options wo; ll_writer_options_init(&wo, sizeof wo);
        wo.frame_size = frames[i]; wo.pool = pool;
        ll_writer *w;
        if (ll_writer_create(&wo, sink_write, &sinks[i], &w) || ll_writer_write(w, data, SIZE) ||
            ll_writer_finish(w)) return 3;
        ll_writer_free(w);
        srcs[i] = (ll_mem_source){sinks[i].p, sinks[i].len};
        ll_seektable *st;
        if (ll_seektable_load(ll_mem_read, &srcs[i], sinks[i].len, &st)) return 4;
        ll_reader_options ro; ll_reader_options_init(&ro, sizeof ro);
        ro.cache = i == 2 ? NULL : cache; ro.pool = pool; ro.whole_frames = i == 0;
        if (ll_reader_create(st, ll_mem_read, &srcs[i], &ro, &readers[i])) return 5;
    }
    pthread_t t[4];
    for (size_t i = 0; i < 4; i++) pthread_create(&t[i], NULL, worker, (void *)(i + 1));
    for (int k = 0; k < 20; k++) {
        ll_cache_set_budget(cache, (k % 3 + 1) * (1u << 20));
        if (k % 5 == 0) ll_cache_clear(cache);
        struct timespec ts = {0, 5000000}; nanosleep(&ts, NULL);
    }
    ll_cache_set_budget(cache, 3u << 20);
    for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
    ll_cache_stats s; ll_cache_get_stats(cache, &s);
    uint64_t held = ll_cache_pool_bytes(cache);
    printf("pool %llu bytes, cache %llu/%llu, %llu inserts, %llu evictions\n", (unsigned long long)held,
           (unsigned long long)s.bytes, (unsigned long long)s.budget, (unsigned long long)s.inserts,
           (unsigned long long)s.evictions);
    if (held > (4u << 20) || s.bytes > s.budget || s.inserts == 0 || s.evictions == 0) failed = 1;
    for (int i = 0; i < 3; i++) { ll_reader_free(readers[i]); free(sinks[i].p); }
    ll_cache_free(cache); ll_pool_free(pool); free(data);
    puts(failed ? "FAILED" : "OK");
    return failed;
}
"""


def test_buffer_pool_under_asan(toolchain, tmp_path):
    src = tmp_path / "pool_stress.c"
    src.write_text(POOL_STRESS)
    exe = tmp_path / "pool_stress"
    res = subprocess.run(["clang", "-std=c11", "-D_GNU_SOURCE", "-Wall", *SAN_FLAGS, f"-I{CSRC}", str(src),
                          *LIB_SRCS, "-o", str(exe), "-lzstd", "-lcrypto", "-lz", "-lisal", "-lpthread"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    res = subprocess.run([str(exe)], capture_output=True, text=True, env=sanitizer_env(), timeout=300)
    assert not report_in(res.stderr), report_in(res.stderr)
    assert res.returncode == 0 and "OK" in res.stdout, res.stdout + res.stderr[-3000:]
