"""`reuse_freed_memory`: large buffers stop costing a fresh, kernel-zeroed mapping each time."""

import os
import subprocess
import sys

import pytest

FAULTS_OF_CHURN = """
import resource
import numpy as np

def faults_of_churn():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        a = np.ones(16 << 20, np.float32)  # 64 MB: above any mmap threshold glibc adapts to
        del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
"""
CHURN = FAULTS_OF_CHURN + """
default = faults_of_churn()
import eqx_bigbird
applied = eqx_bigbird.reuse_freed_memory()
faults_of_churn()  # the heap grows once
print(applied, default, faults_of_churn())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_buffers_are_reused_not_mapped_again():
    # A fresh process: the suite's own process already has the setting (tests/conftest.py).
    out = subprocess.run([sys.executable, "-c", CHURN], capture_output=True, text=True,
                         check=True).stdout.split()
    applied, default, reused = out[0] == "True", int(out[1]), int(out[2])
    assert applied
    assert default >= 20 * 16  # at least one fault per 2 MB huge page of every buffer
    assert reused < default / 10, (default, reused)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's environment variables")
def test_the_environment_form_sets_the_same_at_process_start():
    # The benchmarks start every implementation they time with these variables.
    from eqx_bigbird._allocator import ENVIRONMENT

    script = FAULTS_OF_CHURN + "faults_of_churn()  # the heap grows once\n" \
        "print(faults_of_churn())\n"
    plain, reused = (
        int(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           check=True, env={**os.environ, **extra}).stdout)
        for extra in ({}, ENVIRONMENT)
    )
    assert plain >= 20 * 16
    assert reused < plain / 10, (plain, reused)



BIG_CHURN = """
import ctypes
import resource

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
size = 9 << 28  # 2.25 GiB: above the largest mmap threshold glibc takes
faults = []
for _ in range(3):  # through malloc itself: numpy asks for huge pages on its own
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    buffer = libc.malloc(size)
    ctypes.memset(buffer, 1, size)
    libc.free(buffer)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(faults[-1])
"""


def _transparent_huge_pages() -> bool:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[never]" not in f.read()
    except OSError:
        return False


@pytest.mark.skipif(not _transparent_huge_pages(), reason="no transparent huge pages here")
def test_buffers_above_2_gib_fault_per_huge_page():
    # XLA's temp buffer of an MLM step at 2048 tokens is 2.4 GB: mmap's threshold (an int)
    # cannot keep it, so it is mapped afresh each step; huge pages make that 512x cheaper.
    from eqx_bigbird._allocator import ENVIRONMENT, HUGE_PAGES

    small_pages, huge_pages = (
        int(subprocess.run([sys.executable, "-c", BIG_CHURN], capture_output=True, text=True,
                           check=True, env={**os.environ, **ENVIRONMENT, **extra}).stdout)
        for extra in ({}, HUGE_PAGES)
    )
    assert small_pages >= (9 << 28) // 4096 // 2, small_pages  # one fault per page (or two)
    assert huge_pages < small_pages / 50, (small_pages, huge_pages)
