"""Shared test configuration: hypothesis profiles and the model-untouched guard."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Intel MKL on AVX-512 CPUs picks matrix-product kernels by the number of rows, so a row's value
# depends on how many rows share the call, in the last bits: chunk sizes would then change
# results through the BLAS, not through occlens. Its strict reproducibility mode does not do
# that; the suite runs in it, so the bit-for-bit chunking checks test occlens's own arithmetic.
# MKL reads the variable at its first call, after this; the notebooks' kernels inherit it.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

import torch
from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).parent))

settings.register_profile(
    "default",
    deadline=None,
    max_examples=25,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough",
    deadline=None,
    max_examples=200,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# The test models are tiny: one thread per process beats two (OpenMP overhead per op), and lets
# pytest-xdist use one worker per core.
torch.set_num_threads(1)
