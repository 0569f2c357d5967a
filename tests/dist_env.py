"""Environments for the child processes that tests start as torch.distributed / DeepSpeed ranks."""
from __future__ import annotations

import os
import socket

# Set by a launcher or an enclosing job; a child gets only what its test gives it.
DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
             "GROUP_RANK", "CROSS_RANK", "CROSS_SIZE")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for MASTER_PORT)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment for a CPU rank, without distributed variables, plus ``extra``."""
    # TRITON_INTERPRET (set by tests/conftest.py on CPU) is dropped: ranks run the torch path
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS and k != "TRITON_INTERPRET"}
    env.update(DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    # PATH stays the caller's: torch builds DeepSpeed's comm op with the first `ninja` on it, and
    # two ninja versions (the venv's pip one, the system's) invalidate each other's build cache.
    env.update(extra)
    return env


def single_process_env() -> dict[str, str]:
    """torch.distributed env:// variables of a 1-process world (no launcher)."""
    return child_env(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                     MASTER_PORT=str(free_port()))
