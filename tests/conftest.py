"""Shared pytest fixtures."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def camvid_root() -> Path:
    """The CamVid folder (see imseg.data.find_camvid_root).

    Skipped when the data is not available, except on CI (CI=true), where
    missing data is a broken setup and must fail loudly instead of quietly
    skipping the tests that matter most.
    """
    from imseg.data import DataError, find_camvid_root

    try:
        return find_camvid_root(None)
    except DataError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CamVid is required on CI: {e}")
        pytest.skip(f"CamVid not available (set IMSEG_DATA or put it at ../shared/data/camvid): {e}")


@pytest.fixture(scope="module")
def tiny_root(camvid_root, tmp_path_factory) -> Path:
    """Two downscaled (64x96) CamVid images per split in CamVid's layout, made once per test module
    (a module needing another size defines its own ``tiny_root``)."""
    from tests.helpers import tiny_camvid_folder

    return tiny_camvid_folder(camvid_root, tmp_path_factory.mktemp("tiny"), n=2, size=(64, 96))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _share_the_cores_between_workers() -> None:
    """Under pytest-xdist (``make test`` runs ``-n auto``), give each worker its share of the cores.

    torch would start one thread per core in every worker; two workers with
    two threads each on two cores thrash, and most tests here are small
    tensors where one thread does as well. Child processes a test starts
    (the CLI, torchrun) keep their own defaults.
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def pytest_configure(config: pytest.Config) -> None:
    _share_the_cores_between_workers()
    _ram_tmp(config)


def _ram_tmp(config: pytest.Config) -> None:
    """Put tmp_path on a RAM disk where there is one with room to spare.

    Training tests write full checkpoints (and fsync them); on a slow disk
    that is a third of a config test's time. The tests still write and sync
    exactly as on disk. ``--basetemp`` or IMSEG_TEST_TMP=disk keeps pytest's
    default. Each session gets its own folder (two sessions at once must not
    wipe each other's), removed at the end unless a test failed; folders of
    sessions whose process is gone are removed at the next start.
    """
    import shutil

    shm = Path("/dev/shm")
    if config.option.basetemp or os.environ.get("IMSEG_TEST_TMP") == "disk" or not os.access(shm, os.W_OK):
        return
    prefix = f"imseg-pytest-{os.getuid()}-"
    for stale in shm.glob(prefix + "*"):
        pid = stale.name[len(prefix):]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    free_gb = os.statvfs(shm).f_bavail * os.statvfs(shm).f_frsize / 2**30
    if free_gb >= 12:  # FCN-8s / DeconvNet write two ~2 GB checkpoints (slow tests)
        config.option.basetemp = str(shm / f"{prefix}{os.getpid()}")
        config._imseg_ram_tmp = True


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if getattr(session.config, "_imseg_ram_tmp", False) and exitstatus == 0:
        import shutil

        shutil.rmtree(session.config.option.basetemp, ignore_errors=True)  # RAM: keep only what a failure left
