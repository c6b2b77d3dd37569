"""Suite-wide settings: offline, and one torch thread.

CI has 2 cores and runs pytest in one process; the models here are tiny, so intra-op threads only add contention
(on a busy machine two threads made small convolutions 15-30x slower).
"""

import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)
