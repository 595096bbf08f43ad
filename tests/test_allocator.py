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
import resource
import numpy as np
import eqx_bigbird

def faults_of_churn():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(2):
        a = np.ones(9 << 28, np.uint8)  # 2.25 GiB: above the largest mmap threshold glibc takes
        del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

default = faults_of_churn()
applied = eqx_bigbird.reuse_freed_memory()
faults_of_churn()  # the heap grows once
print(applied, default, faults_of_churn())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_buffers_above_2_gib_are_reused_too():
    # XLA's temp buffer of an MLM step at 2048 tokens is 2.4 GB: mmap's threshold (an int)
    # cannot reach it, so the setting must keep glibc from mapping at all.
    out = subprocess.run([sys.executable, "-c", BIG_CHURN], capture_output=True, text=True,
                         check=True).stdout.split()
    applied, default, reused = out[0] == "True", int(out[1]), int(out[2])
    assert applied
    assert default >= 2 * (9 << 28) // (2 << 20)  # at least one fault per 2 MB huge page
    assert reused < default / 10, (default, reused)
