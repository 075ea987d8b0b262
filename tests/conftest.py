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
