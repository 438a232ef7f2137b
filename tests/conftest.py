"""Pytest setup for every test: no network, a CPU thread count that suits small CI machines, and the groups that
pytest-xdist keeps on one worker. The shared helpers are in tests/helpers.py."""

from __future__ import annotations

import os

import pytest
import torch

from spfde.data.sources import CACHE_ENV

# tests never touch a network, never draw progress bars and keep to the CPU
os.environ.setdefault("WANDB_MODE", "offline")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # under `pytest -n 2` (make test) each worker trains with one thread: two workers of one thread use 2 cores
    # better than one of two; the commands a test starts inherit it through OMP_NUM_THREADS
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
else:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session", autouse=True)
def data_cache(tmp_path_factory):
    """One data cache (the digits split) for the session's workers and every command they start, not the user's."""
    root = tmp_path_factory.getbasetemp()
    os.environ[CACHE_ENV] = str((root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root) / "data-cache")


# tests that need the whole machine (a SLURM cluster's jobs, torchrun's ranks, faults timed against a deadline)
# run one after another on one worker: never side by side with each other
WHOLE_MACHINE = "whole-machine"


def shares_a_module_fixture(item) -> bool:
    """Whether the test uses a fixture built once per module (a trained sweep, a search): its module's tests then
    stay on one worker, so that the fixture is built once, not once per worker."""
    definitions = getattr(item, "_fixtureinfo", None)
    return definitions is not None and any(
        d.scope == "module" for defs in definitions.name2fixturedefs.values() for d in defs)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        if ("slurm_cluster" in item.fixturenames or item.get_closest_marker("whole_machine")
                or item.path.name == "test_distributed.py"):
            item.add_marker(pytest.mark.xdist_group(WHOLE_MACHINE))
        elif shares_a_module_fixture(item):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
