"""Opening the cold-start image in each format: ``Image(ref)`` with an empty disk cache, then again
from the cache the first open filled (what the mount's daemon and its fetcher process do).

Uses the images and the registry storage of ``benchmarks/coldstart`` (run that once first: it
builds and pushes them) and a ``docker-registry`` of its own on them, no link shaping: this is the
CPU an open costs, not the network.  Each open runs in a fresh process (imports compiled first),
the repositories and, with ``--base``, the two checkouts alternating, ``--runs`` times; medians.

    python -m benchmarks.peer_open --runs 3
    python -m benchmarks.peer_open --runs 3 --base /path/to/a/worktree   # A/B against other code
    python -m benchmarks.peer_open --runs 3 --chunk-runs   # as the mounts open them (runs of chunks)

``--base`` is a checkout of lazylayer (its extension built, or copied in) put first on
``PYTHONPATH`` for its runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPOS = ("cs-lazy", "cs-esgz", "cs-szchunk", "cs-zchunk")

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from lazylayer.image import DiskCache, Image
opts = {"chunk_runs": True} if sys.argv[4] == "1" else {}
out = []
for _ in range(2):  # cold (the cache is empty), then from what the first open kept
    t = time.perf_counter()
    img = Image(sys.argv[2], cache=DiskCache(sys.argv[3]), **opts)
    out.append(time.perf_counter() - t)
    img.close()
print(json.dumps(out))
"""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--repos", default=",".join(REPOS), help=f"default {','.join(REPOS)}")
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp/lazylayer-coldstart"),
                    help="benchmarks/coldstart's work directory (its registry storage)")
    ap.add_argument("--base", type=Path, help="another lazylayer checkout to compare with, interleaved")
    ap.add_argument("--chunk-runs", action="store_true",
                    help="open as the mounts do: runs of small chunks one frame each (Image(chunk_runs=True))")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from benchmarks.fetch import Registry

    if not (a.workdir / "registry" / "storage").is_dir():
        raise SystemExit(f"{a.workdir}: no registry storage; run `python -m benchmarks.coldstart.run` once first")
    variants = {"new": ROOT} if a.base is None else {"base": a.base.resolve(), "new": ROOT}
    for path in variants.values():  # compile first, as pip does (this machine sets PYTHONDONTWRITEBYTECODE)
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(path / "lazylayer")], check=False)
    repos = [r for r in a.repos.split(",") if r]
    res: dict[tuple[str, str], list[list[float]]] = {}
    reg = Registry(a.workdir / "registry").start()
    try:
        for _ in range(a.runs):
            for repo in repos:
                for name, path in variants.items():
                    with tempfile.TemporaryDirectory(prefix="peer-open-") as cache:
                        ref = f"docker://127.0.0.1:{reg.port}/{repo}:cs"
                        r = subprocess.run([sys.executable, "-c", CHILD, str(path), ref, cache,
                                            "1" if a.chunk_runs else "0"], capture_output=True,
                                           text=True, cwd=tempfile.gettempdir(),
                                           env={"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": ""})
                    if r.returncode:
                        raise SystemExit(f"{name} {repo}: {r.stderr.strip()[-2000:]}")
                    res.setdefault((repo, name), []).append(json.loads(r.stdout.strip().splitlines()[-1]))
    finally:
        reg.close()
    print("| image | code | open, empty cache (median s) | open from the cache (median s) | runs |")
    print("|---|---|---:|---:|---|")
    for (repo, name), runs in res.items():
        cold = statistics.median(x[0] for x in runs)
        warm = statistics.median(x[1] for x in runs)
        print(f"| {repo} | {name} | {cold:.3f} | {warm:.3f} | "
              + ", ".join(f"{x[0]:.3f}/{x[1]:.3f}" for x in runs) + " |")


if __name__ == "__main__":
    main()
