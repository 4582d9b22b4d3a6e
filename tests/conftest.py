"""pytest configuration: hypothesis profiles and the per-ISA fixture.

Profiles: ``default`` (50 examples), ``quick`` (10) and ``thorough`` (500);
pick one with the environment variable ``HYPOTHESIS_PROFILE``. None has a
deadline: timings on a shared machine are not a property under test.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

from pyconv import _core

settings.register_profile("default", deadline=None, max_examples=50)
settings.register_profile("quick", deadline=None, max_examples=10)
settings.register_profile("thorough", deadline=None, max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

ISAS = list(_core.available_isas())


def _current_isa() -> str:
    return _core.config()["simd"]


@pytest.fixture(params=ISAS)
def isa(request):
    """Run the test under each GEMM code path the CPU supports; restore after."""
    previous = _current_isa()
    _core.set_isa(request.param)
    try:
        yield request.param
    finally:
        _core.set_isa(previous)
