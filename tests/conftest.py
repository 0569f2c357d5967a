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

# The full data sets (e.g. .ci/run sets ADAMIX_DS_DATA where they lie) are for the checks that
# ask for them through `full_data`; everything else, child processes included, reads the bundled
# samples, so the variable is taken out of this process's environment.
FULL_DATA = os.environ.pop("ADAMIX_DS_DATA", "").strip() or None


@pytest.fixture(scope="session")
def full_data() -> Path:
    """The data root of ``$ADAMIX_DS_DATA`` (``e2e/``, ``glue/`` ...); skips when it is unset."""
    if FULL_DATA is None or not Path(FULL_DATA).is_dir():
        pytest.skip("full data sets not given: set ADAMIX_DS_DATA to a folder with e2e/, glue/ ...")
    return Path(FULL_DATA)


@pytest.fixture(scope="session")
def toy_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained toy AdaMix-LoRA adaptation directory (see tests/nlg_toy.py); built once."""
    from tests.nlg_toy import train_toy_checkpoint

    return train_toy_checkpoint(tmp_path_factory.mktemp("toy_run") / "adaptation")
