"""Which rank is gone when a collective fails: a heartbeat per rank in the rendezvous store.

A collective that fails (a peer's connection reset) or times out (``train.collective_timeout_s``)
says nothing useful about who stopped. Each rank's daemon thread bumps a counter in the
process group's key-value store every ``interval`` seconds; after a failure the survivor reads
the counters twice, ``3 * interval`` apart, and the ranks whose counters did not move are the
lost ones (a killed, stopped or partitioned process). Counters, not clocks: nodes need not agree
on the time.
"""
from __future__ import annotations

import threading
import time
from typing import Any

import torch.distributed as dist

_PREFIX = "adamix/heartbeat/"


class LostRankError(RuntimeError):
    """Another rank stopped; this one stops too (the message names the rank)."""


def _default_store() -> Any | None:
    try:
        return dist.distributed_c10d._get_default_store()
    except (AttributeError, RuntimeError, ValueError):
        return None


class Heartbeat:
    """Start one per rank after ``init_distributed``; :meth:`stop` at the end."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.store = _default_store()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if self.store is not None and self.world > 1:
            self._thread = threading.Thread(target=self._beat, daemon=True,
                                            name="adamix-heartbeat")
            self._thread.start()

    def _beat(self) -> None:
        key = f"{_PREFIX}{self.rank}"
        while not self._stop.is_set():
            try:
                self.store.add(key, 1)
            except (RuntimeError, OSError):
                return  # the store is gone (its host died): the main thread will find out
            self._stop.wait(self.interval)

    def _counts(self) -> dict[int, int] | None:
        try:
            # add(key, 0) reads a counter without blocking on a missing key
            return {r: self.store.add(f"{_PREFIX}{r}", 0) for r in range(self.world)}
        except (RuntimeError, OSError):
            return None

    def lost_ranks(self) -> list[int] | None:
        """The ranks whose heartbeat stopped; None if the store itself is unreachable."""
        if self.store is None or self.world == 1:
            return []
        before = self._counts()
        time.sleep(3 * self.interval)
        after = self._counts()
        if before is None or after is None:
            return None
        return [r for r in range(self.world) if r != self.rank and after[r] == before[r]]

    def error(self, err: BaseException, lost: list[int] | None, timeout_s: float
              ) -> LostRankError:
        """A :class:`LostRankError` for the failed collective ``err`` and the ``lost`` ranks
        (:meth:`lost_ranks`; None: the store is unreachable)."""
        if lost is None:
            who = ("the rendezvous store is unreachable: its host (rank 0 under env:// and the "
                   "DeepSpeed launcher) is gone")
        else:
            who = f"rank{'s' if len(lost) > 1 else ''} {', '.join(map(str, lost))} stopped"
        return LostRankError(
            f"rank {self.rank}: a collective failed ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200]}); {who}. Collective timeout: {timeout_s:g} s. "
            "Run the same command again to resume from the last checkpoint")

    def stop(self) -> None:
        self._stop.set()
