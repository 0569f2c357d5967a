"""Session fixtures shared by several test modules."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def toy_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained toy AdaMix-LoRA adaptation directory (see tests/nlg_toy.py); built once."""
    from tests.nlg_toy import train_toy_checkpoint

    return train_toy_checkpoint(tmp_path_factory.mktemp("toy_run") / "adaptation")
