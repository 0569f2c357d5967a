"""launch/train_nlg.py with a full disk simulated: every ``torch.save`` whose path contains
``$ADAMIX_TEST_ENOSPC_AT`` (a checkpoint tag) fails with ENOSPC after writing a few bytes, as a
real full disk fails part-way through a file. For tests/multirank/test_train_nlg_ranks.py."""
from __future__ import annotations

import errno
import os
import runpy
import sys
from pathlib import Path

import torch

MARK = os.environ["ADAMIX_TEST_ENOSPC_AT"]
_save = torch.save


def save_on_a_full_disk(obj, f, *args, **kwargs):
    if isinstance(f, (str, os.PathLike)) and MARK in str(f):
        Path(f).write_bytes(b"PK\x03\x04partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
    return _save(obj, f, *args, **kwargs)


torch.save = save_on_a_full_disk
TRAIN = Path(__file__).resolve().parents[2] / "launch" / "train_nlg.py"
sys.argv = [str(TRAIN), *sys.argv[1:]]
runpy.run_path(str(TRAIN), run_name="__main__")
