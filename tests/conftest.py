"""Suite-wide settings: offline, one torch thread, and a private cache directory.

CI has 2 cores and runs pytest in one process; the models here are tiny, so intra-op threads only add contention
(on a busy machine two threads made small convolutions 15-30x slower). Everything skipstep caches (optimal-variance
tables, reference sets) goes to a temporary ``SKIPSTEP_CACHE_DIR``, never into the user's home directory.
"""

import os
import shutil
import tempfile

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TEST_CACHE_DIR = tempfile.mkdtemp(prefix="skipstep-test-cache-")
os.environ["SKIPSTEP_CACHE_DIR"] = TEST_CACHE_DIR
torch.set_num_threads(1)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(TEST_CACHE_DIR, ignore_errors=True)
