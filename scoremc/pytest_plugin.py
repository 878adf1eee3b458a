"""pytest plugin (registered as ``scoremc`` through the ``pytest11`` entry point).

Fixtures:

* ``scoremc_rng``: a ``numpy.random.Generator`` seeded from the test's node id, so each test
  gets its own reproducible stream (``--scoremc-seed`` shifts all of them);
* ``scoremc_targets``: the built-in targets of the seed papers, by name;
* ``scoremc_processes``: one default instance of each forward process.

Kept light at import (it loads in every pytest session of an environment with scoremc): it
imports nothing from scoremc.testing (which needs hypothesis) until a fixture is used.
"""
from __future__ import annotations

import zlib

import pytest


def pytest_addoption(parser):
    parser.addoption("--scoremc-seed", type=int, default=0, help="base seed of the scoremc_rng fixture")


@pytest.fixture
def scoremc_rng(request):
    import numpy as np

    key = zlib.crc32(request.node.nodeid.encode())
    return np.random.default_rng([request.config.getoption("--scoremc-seed"), key])


@pytest.fixture(scope="session")
def scoremc_targets():
    from scoremc.builtin import TARGETS

    return {name: make() for name, make in TARGETS.items() if name != "digits"}


@pytest.fixture(scope="session")
def scoremc_processes():
    from scoremc.processes import PROCESSES

    return {type(p).__name__.lower(): p for p in PROCESSES}
