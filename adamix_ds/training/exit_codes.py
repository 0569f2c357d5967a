"""Exit codes of the training launchers. 2: bad input, refused before training. 3 and 4: faults
after which the same command resumes from the last checkpoint."""
from __future__ import annotations

from .heartbeat import LostRankError
from .state import CheckpointSaveError

#: Faults a rerun recovers from, and the exit code each one gets.
RESUMABLE_FAULTS: dict[type[Exception], int] = {CheckpointSaveError: 3, LostRankError: 4}


def fault_exit_code(err: Exception) -> int:
    """The exit code of a :data:`RESUMABLE_FAULTS` exception."""
    return next(code for kind, code in RESUMABLE_FAULTS.items() if isinstance(err, kind))
