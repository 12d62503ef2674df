"""hostmem.retain_freed_memory: a freed XLA:CPU buffer is reused, not faulted in afresh.

Each case runs in a fresh process (malloc settings are process-wide and take effect only
before the threads that allocate start): a jitted function whose temporaries (a cumulative
sum) are at least 64 MiB runs in rounds of three calls, and the process counts its minor page
faults per call in its best of ten rounds (the heap may take a round or two to grow to the program's
needs). Without the settings glibc serves such blocks with mmap and unmaps them on free, so
every run faults in at least those 16,384 pages again.
"""

import os
import subprocess
import sys

_PAGES = 64 * 2**20 // 4096

_SCRIPT = f"""
import resource
from t5x_lite import hostmem
print(hostmem.retain_freed_memory())
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.cumsum(x * 2.0).sum())
x = jnp.ones({_PAGES * 1024}, jnp.float32)
rounds = []
for _ in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        f(x).block_until_ready()
    rounds.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3)
print(min(rounds))
"""


def _faults_per_call(retain: str) -> tuple[str, float]:
    env = dict(os.environ, T5X_LITE_RETAIN_HOST_MEMORY=retain, JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[-2], float(out[-1])


def test_freed_buffers_are_reused_not_faulted_in_again():
    applied, faults = _faults_per_call("1")
    assert applied == "True"
    assert faults < 0.05 * _PAGES, faults


def test_without_it_every_call_faults_in_fresh_pages():
    """The baseline the first test is measured against (opted out with the env variable)."""
    applied, faults = _faults_per_call("0")
    assert applied == "False"
    assert faults > 0.9 * _PAGES, faults
