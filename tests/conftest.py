"""Session fixtures shared by several test modules."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Triton decides between compiler and interpreter when it is first imported, and any module
# (torch, peft) may import it early: without a GPU, choose the interpreter before anything runs.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def toy_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained toy AdaMix-LoRA adaptation directory (see tests/nlg_toy.py); built once."""
    from tests.nlg_toy import train_toy_checkpoint

    return train_toy_checkpoint(tmp_path_factory.mktemp("toy_run") / "adaptation")
