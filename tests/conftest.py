import os
import random

import pytest


@pytest.fixture(scope="session")
def corpus() -> bytes:
    """~6 MB of mixed, compressible and incompressible data (real files plus noise)."""
    rng = random.Random(1234)
    chunks = []
    total = 0
    for root in ("/usr/lib/python3", "/usr/share/doc", "/etc"):
        for dirpath, _, files in sorted(os.walk(root)):
            for name in sorted(files):
                path = os.path.join(dirpath, name)
                try:
                    if os.path.islink(path) or not os.path.isfile(path):
                        continue
                    with open(path, "rb") as f:
                        data = f.read(200_000)
                except OSError:
                    continue
                chunks.append(data)
                total += len(data)
                if rng.random() < 0.05:
                    chunks.append(rng.randbytes(rng.randrange(1, 50_000)))
                if total > 6_000_000:
                    return b"".join(chunks)
    chunks.append(rng.randbytes(6_000_000 - total if total < 6_000_000 else 1000))
    return b"".join(chunks)
