"""launch/train_nlg.py with slow checkpoint writes, so a test can kill it inside one: before
each ``torch.save`` into a checkpoint directory it creates ``<file>.writing`` beside the target
and sleeps ``$ADAMIX_TEST_SAVE_PAUSE`` seconds. For tests/multirank/test_kill9.py."""
from __future__ import annotations

import os
import runpy
import sys
import time
from pathlib import Path

import torch

PAUSE = float(os.environ.get("ADAMIX_TEST_SAVE_PAUSE", "0.5"))
_save = torch.save


def slow_save(obj, f, *args, **kwargs):
    if isinstance(f, (str, os.PathLike)) and "checkpoints" in str(f):
        Path(f"{f}.writing").touch()
        time.sleep(PAUSE)
    return _save(obj, f, *args, **kwargs)


torch.save = slow_save
TRAIN = Path(__file__).resolve().parents[2] / "launch" / "train_nlg.py"
sys.argv = [str(TRAIN), *sys.argv[1:]]
runpy.run_path(str(TRAIN), run_name="__main__")
