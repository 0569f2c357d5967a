"""Helper for tests/multirank/test_train_nlg_ranks.py: ``launch/train_nlg.py`` with rank 1 routing
from a different seed.

Run it exactly like ``launch/train_nlg.py`` (same flags, under the DeepSpeed launcher or mpirun).
The library has no switch for a rank-dependent routing seed (rightly), so this script wraps the
``inject_adamix`` that the trainer calls: on rank 1 it builds the router from
``routing_seed + 1``, everything else is the unmodified training run. The trainer's periodic
``router.check_consistency()`` (every ``train.route_check_every`` optimizer steps) must then stop
the run with "AdaMix routes differ across ranks at step N" instead of training on silently
inconsistent routes.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import torch.distributed as dist

from adamix_ds.training import trainer

# launch/train_nlg.py, loaded from its file: it is a script, not a module of the package
_SPEC = importlib.util.spec_from_file_location(
    "train_nlg", Path(__file__).resolve().parents[2] / "launch" / "train_nlg.py")
train_nlg = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(train_nlg)

_inject_adamix = trainer.inject_adamix


def _inject_with_rank1_skew(model, cfg, router=None):
    if dist.get_rank() == 1:
        cfg = dataclasses.replace(cfg, routing_seed=cfg.routing_seed + 1)
    return _inject_adamix(model, cfg, router)


trainer.inject_adamix = _inject_with_rank1_skew

if __name__ == "__main__":
    sys.exit(train_nlg.main())
