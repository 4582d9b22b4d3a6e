"""pytest configuration: hypothesis profiles and the per-ISA fixture.

Profiles: ``default`` (50 examples), ``quick`` (10) and ``thorough`` (500);
pick one with the environment variable ``HYPOTHESIS_PROFILE``. None has a
deadline: timings on a shared machine are not a property under test.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

import pyconv
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


@pytest.fixture(autouse=True, scope="session")
def _run_outside_the_source_tree(tmp_path_factory):
    """Work in a scratch directory, not the repository root.

    Subprocesses (``python -c``, ``python -m pyconv``) put their working
    directory first on sys.path; from the repository root they would import the
    source folder ``pyconv/``, which has no compiled ``_core`` in a regular
    (non-editable) install, instead of the installed package.
    """
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    try:
        yield
    finally:
        os.chdir(previous)


@pytest.fixture
def restore_threads():
    """The thread count before the test (set back after it), for tests that change it."""
    n = pyconv.get_num_threads()
    yield n
    pyconv.set_num_threads(n)
