"""Helper process for tests/test_routing.py: one simulated (or real) rank of an AdaMix run.

Two sub-commands, each printing one JSON object per line on stdout:

``routes``  Build a :class:`adamix_ds.routing.Router` with the standard test registrations, then
            print every (step, pass, key) route and the per-step digest.  The process first
            scrambles torch's global RNG with ``--torch-seed`` so a route that leaked from torch's
            RNG would differ between two such processes.

``dist``    Join a real ``torch.distributed`` gloo group (env:// rendezvous: MASTER_ADDR,
            MASTER_PORT, RANK, WORLD_SIZE; 60 s timeout), then run the scenarios named on the
            command line.  Every scenario is a collective (``check_consistency``), so all ranks
            must run the same list.  For each scenario it prints
            ``{"scenario", "rank", "step", "ok", "error"}``.

Scenarios (``S`` = ``--steps``):
  same       every rank: seed ``--seed``, advanced S steps;
  seed       rank 1 uses seed ``--seed + 1``, others ``--seed``; all at step S;
  ahead      rank 1 advanced S + 1 steps, others S; all with seed ``--seed``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import types
from pathlib import Path

# torch and the router are imported lazily (see _import_routing) so that a bad command line
# fails in milliseconds, before any rendezvous.

# (name, num_down, num_up): mixed expert counts, including a single-expert side.
REGISTRATIONS = (
    ("layer0.q", 4, 4),
    ("layer0.v", 4, 4),
    ("layer1.q", 2, 3),
    ("layer1.v", 8, 1),
    ("layer1.adapter", 3, 2),
)


def _import_routing():
    """Import adamix_ds.routing without running adamix_ds/__init__.py.

    The package __init__ pulls in transformers (seconds of start-up per process) which routing
    does not use. A bare package object with the real __path__ lets ``adamix_ds.routing`` (and
    its imports ``.config`` / ``.experts``) load from the real source files.
    """
    if "adamix_ds" not in sys.modules:
        pkg_dir = Path(__file__).resolve().parents[2] / "adamix_ds"
        pkg = types.ModuleType("adamix_ds")
        pkg.__path__ = [str(pkg_dir)]
        sys.modules["adamix_ds"] = pkg
    import adamix_ds.routing as routing
    return routing


def build_router(seed: int):
    """A Router with the standard test registrations (imports the library on first use)."""
    router = _import_routing().Router(seed=seed)
    for name, num_down, num_up in REGISTRATIONS:
        router.register(name, num_down, num_up)
    return router


def emit(obj: dict) -> None:
    print(json.dumps(obj, sort_keys=True), flush=True)


def cmd_routes(args: argparse.Namespace) -> int:
    import torch

    torch.manual_seed(args.torch_seed)
    torch.rand(1000)  # move torch's global RNG away from its seeded state
    router = build_router(args.seed)
    for step in range(args.steps):
        routes = {f"{key}:{p}": list(router.pair(key, step, p))
                  for key in range(router.num_keys) for p in (0, 1)}
        emit({"step": step, "routes": routes, "digest": router.digest(step)})
    return 0


def _scenario_router(scenario: str, rank: int, seed: int, steps: int):
    if scenario == "same":
        router = build_router(seed)
        router.advance(steps)
    elif scenario == "seed":
        router = build_router(seed + 1 if rank == 1 else seed)
        router.advance(steps)
    elif scenario == "ahead":
        router = build_router(seed)
        router.advance(steps + 1 if rank == 1 else steps)
    else:
        raise ValueError(f"unknown scenario {scenario!r}")
    return router


def cmd_dist(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method="env://",
                            timeout=datetime.timedelta(seconds=60))
    try:
        rank = dist.get_rank()
        for scenario in args.scenarios:
            router = _scenario_router(scenario, rank, args.seed, args.steps)
            try:
                router.check_consistency()
            except RuntimeError as err:
                emit({"scenario": scenario, "rank": rank, "step": router.step, "ok": False,
                      "error": str(err)})
            else:
                emit({"scenario": scenario, "rank": rank, "step": router.step, "ok": True,
                      "error": None})
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_routes = sub.add_parser("routes")
    p_routes.add_argument("--seed", type=int, required=True)
    p_routes.add_argument("--steps", type=int, default=50)
    p_routes.add_argument("--torch-seed", type=int, default=0)
    p_dist = sub.add_parser("dist")
    p_dist.add_argument("--seed", type=int, required=True)
    p_dist.add_argument("--steps", type=int, default=5)
    p_dist.add_argument("scenarios", nargs="+", choices=("same", "seed", "ahead"))
    args = parser.parse_args(argv)
    if args.command == "routes":
        return cmd_routes(args)
    for var in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE"):
        if var not in os.environ:
            parser.error(f"dist needs {var} in the environment")
    return cmd_dist(args)


if __name__ == "__main__":
    sys.exit(main())
