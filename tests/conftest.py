"""Suite-wide settings: offline, one torch thread, a private cache directory, once-per-process warnings reset.

CI has 2 cores and runs pytest in one process; the models here are tiny, so intra-op threads only add contention
(on a busy machine two threads made small convolutions 15-30x slower). Everything skipstep caches (optimal-variance
tables, reference sets) goes to a temporary ``SKIPSTEP_CACHE_DIR``, never into the user's home directory.
"""

import os
import shutil
import tempfile

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TEST_CACHE_DIR = tempfile.mkdtemp(prefix="skipstep-test-cache-")
os.environ["SKIPSTEP_CACHE_DIR"] = TEST_CACHE_DIR
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _config_warnings_per_test():
    """skipstep warns once per process about a foreign config key; each test sees its own first warning."""
    from skipstep import diffusers_config

    diffusers_config._WARNED.clear()
    yield


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(TEST_CACHE_DIR, ignore_errors=True)
