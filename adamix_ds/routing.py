"""Rank-synchronised stochastic routing.

The route of a forward is a pure function of (seed, micro-step, pass, routing key, side), computed
with a counter-based hash (SplitMix64 finaliser) instead of draws from torch's global RNG. Hence:
* every rank computes the same route with no communication (same seed, same step counter);
* dropout and data shuffling keep their own RNG streams, untouched by routing;
* activation recomputation replays the forward with the same router state, so the same route;
* a resumed run restores ``step`` and continues the identical route sequence.

A *routing key* is an int per adapted projection (slice), handed out by :meth:`Router.register`
in module order at injection time. The two sides (down, up) of a key draw independently.

A *route* (:data:`Route`) holds one ``(down_index, up_index)`` pair per equal segment of the
leading batch dimension: one segment normally, two for the paired consistency pass.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch

from .config import INFERENCE_MODES

Route = Sequence[tuple[int, int]]

_MASK64 = (1 << 64) - 1
_SIDE_DOWN, _SIDE_UP = 0, 1
# Eval-time random routing draws from a separate stream so it never replays training routes.
_EVAL_STREAM = 0x5EED_E7A1


def splitmix64(z: int) -> int:
    """One SplitMix64 step (Steele et al. 2014): a bijective, well-mixed 64-bit hash."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def counter_hash(*words: int) -> int:
    """Hash a tuple of non-negative ints into 64 bits by chaining SplitMix64."""
    h = 0
    for word in words:
        h = splitmix64(h ^ (word & _MASK64))
    return h


def draw_expert(num_experts: int, *words: int) -> int:
    """An expert index in [0, num_experts) from the counter; modulo bias < M / 2**64."""
    return 0 if num_experts == 1 else counter_hash(*words) % num_experts


class Router:
    """Decides, for each adapted projection, which experts a forward uses.

    Attributes:
        seed: routing seed (identical on all ranks).
        step: training micro-step counter; the training loop calls :meth:`advance` once per
            micro-batch, *after* backward so recomputed activations see the same route.
        passes: pass ids of the batch segments of the current forward: ``(0,)`` for a plain
            forward, ``(0, 1)`` for the paired consistency pass over ``cat(batch, batch)``.
        inference: eval policy: merged | fixed | random | ensemble.
        eval_draw: counter of the eval-time random stream (``random`` / ``ensemble``).
        fixed_expert: the expert ``fixed`` serves on each routed side (a shared side has one).
    """

    def __init__(self, seed: int = 0, inference: str = "merged") -> None:
        if inference not in INFERENCE_MODES:
            raise ValueError(f"inference must be one of {list(INFERENCE_MODES)}, got {inference!r}")
        self.seed = seed
        self.step = 0
        self.passes: tuple[int, ...] = (0,)
        self.inference = inference
        self.eval_draw = 0
        self.fixed_expert = 0
        self._keys: list[tuple[str, int, int]] = []  # (name, num_down, num_up) per key

    # --- structure ---------------------------------------------------------------------------
    def register(self, name: str, num_down: int, num_up: int) -> int:
        """Give an adapted projection its routing key (its index in registration order)."""
        self._keys.append((name, num_down, num_up))
        return len(self._keys) - 1

    @property
    def num_keys(self) -> int:
        return len(self._keys)

    # --- routes ------------------------------------------------------------------------------
    def pair(self, key: int, step: int, pass_id: int, stream: int = 0) -> tuple[int, int]:
        """(down, up) experts of ``key`` at (step, pass)."""
        _, num_down, num_up = self._keys[key]
        words = (self.seed, stream, step, pass_id, key)
        return (draw_expert(num_down, *words, _SIDE_DOWN), draw_expert(num_up, *words, _SIDE_UP))

    def fixed_pair(self, key: int) -> tuple[int, int]:
        """(down, up) that ``fixed`` serves for ``key``: :attr:`fixed_expert` on a side with
        several experts, the only one on a shared side."""
        _, num_down, num_up = self._keys[key]
        k = self.fixed_expert
        if k >= max(num_down, num_up):
            raise ValueError(f"fixed expert {k} does not exist: {self._keys[key][0]} has "
                             f"{num_down} down / {num_up} up experts")
        return (k if num_down > 1 else 0, k if num_up > 1 else 0)

    def route(self, key: int, training: bool) -> Route | None:
        """The route for one forward of projection ``key``; ``None`` = merged (Eq. 3) weights."""
        if training:
            return tuple(self.pair(key, self.step, p) for p in self.passes)
        if self.inference == "merged":
            return None
        if self.inference == "fixed":
            return tuple(self.fixed_pair(key) for _ in self.passes)
        # random / ensemble: a fresh eval stream, pass p = ensemble member p.
        return tuple(self.pair(key, self.eval_draw, p, stream=_EVAL_STREAM) for p in self.passes)

    def advance(self, steps: int = 1) -> None:
        """Move to the next training micro-step."""
        self.step += steps

    def advance_eval(self, draws: int = 1) -> None:
        """Move the eval-time random stream on: the next ``random`` / ``ensemble`` forward routes
        differently. Callers advance it per decode or per batch; within one call (e.g. all the
        steps of one beam search) the route stays fixed."""
        self.eval_draw += draws

    @contextlib.contextmanager
    def use_passes(self, *passes: int) -> Iterator[Router]:
        """Temporarily route the batch segments with these pass ids, e.g. ``use_passes(0, 1)``."""
        saved = self.passes
        self.passes = tuple(passes)
        try:
            yield self
        finally:
            self.passes = saved

    @contextlib.contextmanager
    def use_inference(self, mode: str) -> Iterator[Router]:
        """Temporarily switch the eval policy."""
        if mode not in INFERENCE_MODES:
            raise ValueError(f"inference must be one of {list(INFERENCE_MODES)}, got {mode!r}")
        saved = self.inference
        self.inference = mode
        try:
            yield self
        finally:
            self.inference = saved

    # --- recomputation -----------------------------------------------------------------------
    def forward_state(self) -> tuple[int, tuple[int, ...], str, int]:
        """Everything besides the key that decides a forward's routes:
        ``(step, passes, inference, eval_draw)``."""
        return self.step, self.passes, self.inference, self.eval_draw

    @contextlib.contextmanager
    def replaying(self, state: tuple[int, tuple[int, ...], str, int]) -> Iterator[Router]:
        """Route as the forward that saw ``state`` (a :meth:`forward_state`) did: activation
        checkpointing recomputes a block during backward, after the pass contexts closed."""
        saved = self.forward_state()
        self.step, self.passes, self.inference, self.eval_draw = state
        try:
            yield self
        finally:
            self.step, self.passes, self.inference, self.eval_draw = saved

    # --- resume ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "step": self.step, "eval_draw": self.eval_draw,
                "num_keys": self.num_keys}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["seed"] != self.seed:
            raise ValueError(
                f"router seed mismatch: checkpoint {state['seed']}, config {self.seed}"
            )
        if "num_keys" in state and state["num_keys"] != self.num_keys:
            raise ValueError(f"router has {self.num_keys} routing keys, checkpoint has "
                             f"{state['num_keys']}: the adapted modules differ")
        self.step, self.eval_draw = int(state["step"]), int(state["eval_draw"])

    # --- cross-rank check --------------------------------------------------------------------
    def digest(self, step: int | None = None, passes: tuple[int, ...] = (0, 1)) -> int:
        """A 63-bit digest of every key's route at ``step`` (default: the current step)."""
        step = self.step if step is None else step
        words = [self.seed, step, len(self._keys)]
        for key in range(len(self._keys)):
            for p in passes:
                words.extend(self.pair(key, step, p))
        return counter_hash(*words) >> 1  # fits a signed int64 tensor

    def check_consistency(self, group: object | None = None, every: int = 1) -> None:
        """All-gather the route digest of the current step and raise if ranks disagree.

        Costs one tiny all-gather when ``step % every == 0`` (call it each step with
        ``every=N``); a no-op otherwise and when torch.distributed is not initialised.
        """
        dist = torch.distributed
        if self.step % every or not (dist.is_available() and dist.is_initialized()):
            return
        mine = torch.tensor([self.digest(), self.step], dtype=torch.int64)
        gathered = [torch.zeros_like(mine) for _ in range(dist.get_world_size(group))]
        dist.all_gather(gathered, mine, group=group)
        reference = gathered[0]
        bad = [rank for rank, g in enumerate(gathered) if not torch.equal(g, reference)]
        if bad:
            # Group ranks by (digest, step) so the odd one out is visible with many ranks.
            groups: dict[tuple[int, int], list[int]] = {}
            for rank, g in enumerate(gathered):
                groups.setdefault((int(g[0]), int(g[1])), []).append(rank)
            detail = "; ".join(f"ranks {ranks}: step {step} digest {digest:#x}"
                               for (digest, step), ranks in groups.items())
            raise RuntimeError(
                f"AdaMix routes differ across ranks at step {self.step}: ranks {bad} disagree "
                f"with rank 0 ({detail}). Check that every rank uses the same routing_seed and "
                "advances the router once per micro-batch.")
