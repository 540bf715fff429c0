"""allocator.keep_freed_memory: far fewer page faults, the same numbers (each case in a fresh process)."""

import json
import os
import platform
import subprocess
import sys

import pytest

from ambiguous_digits import allocator

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc"
                                or sys.maxsize < 2**32, reason="glibc's mallopt, 64-bit thresholds")

# Frees more than glibc's default (dynamic) trim threshold at once, every round, as a
# training step does; then trains a tiny CNN and hashes its probabilities.
PROBE = """
import hashlib, json, resource, sys
import numpy as np
from ambiguous_digits import allocator
tuned = allocator.keep_freed_memory() if sys.argv[1] == "tuned" else None
import torch
from ambiguous_digits.config import Recipe
from ambiguous_digits.train import Precision, Runtime, predict_probs, train
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
before = faults()
for _ in range(20):
    blocks = [np.ones(1 << 20) for _ in range(4)]  # four 8 MiB arrays, written, then freed
    del blocks
after = faults()
torch.set_num_threads(1)
rng = np.random.default_rng(0)
x, y = rng.integers(0, 256, (512, 28, 28), dtype=np.uint8), rng.integers(0, 10, 512)
model, _ = train(x, y, Recipe(epochs=1, batch_size=128), 0, Runtime(torch.device("cpu"), Precision(False)),
                 num_classes=10)
probs = predict_probs(model, x, torch.device("cpu"))
print(json.dumps({"tuned": tuned, "faults": after - before, "probs": hashlib.sha256(probs.tobytes()).hexdigest()}))
"""


def _probe(mode: str) -> dict:
    # glibc's own defaults in both, whatever this shell's environment sets
    env = {k: v for k, v in os.environ.items()
           if k not in allocator.USER_SETTINGS and k not in ("GLIBC_TUNABLES", "LD_PRELOAD")}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], check=True, capture_output=True, text=True,
                         env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_fewer_page_faults_and_the_same_probabilities():
    plain, tuned = _probe("plain"), _probe("tuned")
    assert tuned["tuned"] is True and plain["tuned"] is None
    # Plain glibc hands the 32 MiB back and faults it in again every round (measured on
    # the build machine, transparent huge pages on madvise: ~40,000 faults against ~2,000).
    assert tuned["faults"] * 5 < plain["faults"], (plain, tuned)
    assert tuned["probs"] == plain["probs"]


def test_idempotent(monkeypatch):
    for name in (*allocator.USER_SETTINGS, "GLIBC_TUNABLES", "LD_PRELOAD"):
        monkeypatch.delenv(name, raising=False)
    assert allocator.keep_freed_memory() and allocator.keep_freed_memory()


@pytest.mark.parametrize("name,value", [("MALLOC_TRIM_THRESHOLD_", "131072"), ("MALLOC_MMAP_THRESHOLD_", "0"),
                                        ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0"),
                                        ("LD_PRELOAD", "/usr/lib/libjemalloc.so.2")])
def test_the_users_own_allocator_settings_win(monkeypatch, name, value):
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda *_: pytest.fail("mallopt called"))
    monkeypatch.setenv(name, value)
    assert allocator.keep_freed_memory() is False
