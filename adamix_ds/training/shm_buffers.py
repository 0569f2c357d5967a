"""Named shared memory that DeepSpeed's CPU communication leaves behind.

On the CPU accelerator, ``deepspeed.init_distributed`` builds a shared-memory all-reduce: every
rank creates ``/dev/shm/deepspeed_allreduce_buffer_<uid>_<MASTER_ADDR>_<MASTER_PORT>_<rank>``
(tens of MB) and maps every other rank's. DeepSpeed never unlinks these files, so each run
leaves its buffers in RAM-backed ``/dev/shm`` until reboot; a machine that runs many jobs fills
it (and then fails with SIGBUS). Once every rank has mapped every buffer, the names are no longer
needed: unlinking them then frees the memory when the last rank exits, however it exits.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch.distributed as dist

SHM_DIR = Path("/dev/shm")


def allreduce_buffer_path(rank: int) -> Path:
    """This process's DeepSpeed CPU all-reduce buffer for ``rank`` (from the rendezvous env)."""
    addr, port = os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", "")
    return SHM_DIR / f"deepspeed_allreduce_buffer_{os.getuid()}_{addr}_{port}_{rank}"


def unlink_allreduce_buffer(rank: int) -> bool:
    """Collective: after a barrier (every rank has opened every buffer: a rank still inside
    ``init_distributed`` waits for the name to appear and would hang), remove this rank's
    buffer name. Returns True when there was one."""
    if dist.is_initialized():
        dist.barrier()
    try:
        allreduce_buffer_path(rank).unlink()
    except FileNotFoundError:
        return False
    return True
