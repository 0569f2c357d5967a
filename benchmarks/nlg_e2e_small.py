#!/usr/bin/env python
"""E2E on a stand-in pretrained GPT-2: LoRA, AdaMix-LoRA, adapter, AdaMix-adapter, full FT.

The backbone is the small GPT-2 that ``launch/pretrain_lm.py`` pre-trains here on non-E2E text
(no pretrained GPT-2 can be downloaded on these machines); it stays frozen except in ``full``.
Every row trains for the same number of optimizer steps on the same number of E2E training
examples (``--steps`` x ``--batch_size``), then decodes the whole E2E test set (630 MRs) with the
paper's beam search and is scored with the project's official-equivalent E2E scorer:

* ``lora``: LoRA r=4 on Q,V, one expert, no consistency pass;
* ``adamix_lora``: 8 LoRA experts, up (B) shared, consistency weight 100, experts start as
  copies (the authors' code); ``adamix_lora_indep``: the same with independently drawn experts;
* ``adapter``: one Houlsby adapter, bottleneck 8, after each FFN;
* ``adamix_adapter``: 8 adapter experts, up shared, consistency weight 100;
* ``full``: every weight trains (plain label-smoothed CE), the upper row.

AdaMix rows are decoded under the merged (served), fixed, random and ensemble policies. Each
trained model is kept under ``--work_dir`` and each finished decode is written at once to the JSON
cache, so an interrupted benchmark resumes where it stopped.

    python launch/pretrain_lm.py --data_dir DATA --output_dir ~/.cache/adamix_ds/standin-gpt2-6x256
    python benchmarks/nlg_e2e_small.py --data_dir DATA/e2e
    python benchmarks/nlg_e2e_small.py --data_dir DATA/e2e --report_only
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parent.parent

from adamix_ds import AdaMixConfig, inject_adamix  # noqa: E402
from adamix_ds.backbones import load_backbone  # noqa: E402
from adamix_ds.data import collate_nlg, load_nlg_dataset, load_tokenizer  # noqa: E402
from adamix_ds.data.nlg import resolve_split_file  # noqa: E402
from adamix_ds.evaluation.generate import decode_contexts  # noqa: E402
from adamix_ds.evaluation.pipeline import scored_texts, split_groups  # noqa: E402
from adamix_ds.losses import adamix_loss  # noqa: E402
from adamix_ds.tasks.nlg import adamix_forward  # noqa: E402
from nlg_e2e_small_report import POLICIES, ReportContext, format_report  # noqa: E402
from run_cache import append_results, load_cache, save_run, settings_hash  # noqa: E402

SCRIPT_VERSION = 1      # bump when a change alters results: old cache entries stop matching
METHODS = ("lora", "adamix_lora", "adamix_lora_indep", "adapter", "adamix_adapter", "full")
LABELS = {"lora": "LoRA r=4 (Q,V)", "adamix_lora": "AdaMix-LoRA (8, copy init, merged)",
          "adamix_lora_indep": "AdaMix-LoRA (8, independent init, merged)",
          "adapter": "Adapter b=8 (FFN)", "adamix_adapter": "AdaMix-adapter (8, merged)",
          "full": "Full fine-tuning"}
DEFAULT_LR = {"lora": 1e-3, "adamix_lora": 1e-3, "adamix_lora_indep": 1e-3, "adapter": 1e-3,
              "adamix_adapter": 1e-3, "full": 2e-4}
DEFAULT_BACKBONE = Path(os.environ.get("ADAMIX_DS_CACHE", Path.home() / ".cache" / "adamix_ds")
                        ) / "standin-gpt2-6x256"


def log(msg: str) -> None:
    print(msg, flush=True)


def adamix_config(method: str, seed: int, consistency_weight: float = 100.0
                  ) -> AdaMixConfig | None:
    """The adaptation of each row (None: full fine-tuning); ``consistency_weight`` is the AdaMix
    rows' w (the paper's 100 for GPT-2; 0 keeps the two routed passes without the term)."""
    lora = dict(method="lora", rank=4, alpha=32, targets=("q", "v"), lora_dropout=0.1,
                share="up", routing_seed=seed)
    adapter = dict(method="adapter", bottleneck=8, placement="ffn", activation="gelu_tanh",
                   share="up", routing_seed=seed)
    mixture = dict(num_experts=8, consistency_weight=consistency_weight,
                   consistency_mode="stopgrad")
    if method == "lora":
        return AdaMixConfig(num_experts=1, consistency_weight=0.0, **lora)
    if method == "adamix_lora":
        return AdaMixConfig(expert_init="copy", **mixture, **lora)
    if method == "adamix_lora_indep":
        return AdaMixConfig(expert_init="independent", **mixture, **lora)
    if method == "adapter":
        return AdaMixConfig(num_experts=1, consistency_weight=0.0, **adapter)
    if method == "adamix_adapter":
        return AdaMixConfig(**mixture, **adapter)
    return None


def policies_of(method: str) -> tuple[str, ...]:
    cfg = adamix_config(method, 0)
    return POLICIES if cfg is not None and cfg.num_experts > 1 else ("merged",)


def build(method: str, args: argparse.Namespace, seed: int):
    """(model, router or None, cfg or None, trained params, serving params)."""
    model = load_backbone(str(args.backbone), init="pretrained")
    cfg = adamix_config(method, seed, args.consistency_weight)
    if cfg is None:
        for p in model.parameters():
            p.requires_grad_(True)
        n = sum(p.numel() for p in model.parameters())
        return model, None, None, n, n
    torch.manual_seed(seed)  # expert init
    report = inject_adamix(model, cfg)
    return model, report.router, cfg, report.trainable_params, report.inference_params


# --- data ----------------------------------------------------------------------------------------
def train_batches(dataset: Any, steps: int, batch_size: int, seed: int, chunk: int = 50):
    """``steps`` batches: a seeded permutation of the training set (repeated if needed), sorted
    by length within chunks of ``chunk`` batches (little padding), chunk order kept."""
    g = torch.Generator().manual_seed(7919 * seed + 1)
    need = steps * batch_size
    order: list[int] = []
    while len(order) < need:
        order += torch.randperm(len(dataset), generator=g).tolist()
    order = order[:need]
    span = chunk * batch_size
    lengths = dataset["input_ids"]
    for start in range(0, need, span):
        part = sorted(order[start:start + span], key=lambda i: len(lengths[i]))
        batches = [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
        perm = torch.randperm(len(batches), generator=g).tolist()
        for b in perm:
            yield [dataset[i] for i in batches[b]]


# --- one run -------------------------------------------------------------------------------------
def train(model, router, cfg, method: str, dataset: Any, args: argparse.Namespace, seed: int,
          pad_id: int) -> dict[str, Any]:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr[method], weight_decay=args.weight_decay)
    warmup = max(1, round(args.warmup * args.steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: s / warmup if s < warmup
                                                 else max(0.0, (args.steps - s) /
                                                          max(1, args.steps - warmup)))
    consistency = "paired" if cfg is not None and cfg.num_experts > 1 else "off"
    model.train()
    torch.manual_seed(seed)  # dropout stream
    start, losses, cons, step = time.perf_counter(), [], [], 0
    tag = f"[{method} seed {seed}]"
    for examples in train_batches(dataset, args.steps, args.batch_size, seed):
        batch = collate_nlg(examples, pad_id)
        if cfg is None:
            logits = model(input_ids=batch["input_ids"],
                           attention_mask=batch["attention_mask"]).logits
            out = adamix_loss(logits[:, :-1], None, batch["labels"][:, 1:], 0.0,
                              smoothing=args.label_smoothing)
        else:
            out = adamix_forward(model, batch, router, cfg, consistency, args.label_smoothing)
        out.loss.backward()
        if args.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if router is not None:
            router.advance()
        step += 1
        if step % args.log_every == 0 or step == args.steps:
            losses.append(out.task_loss.item())
            cons.append(out.consistency.item())
            rate = (time.perf_counter() - start) / step
            log(
                f"{tag} step {step}/{args.steps} task loss {losses[-1]:.3f} consistency "
                f"{cons[-1]:.4f} ({rate:.2f} s/step, eta {(args.steps - step) * rate / 60:.1f} min)"
            )
    return {"train_seconds": time.perf_counter() - start, "steps": step,
            "examples": step * args.batch_size, "task_loss_log": losses,
            "consistency_log": cons}


def trained_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_state(model, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(trained_state(model), str(tmp))
    os.replace(tmp, path)


def load_state(model, path: Path) -> None:
    state = load_file(str(path))
    params = dict(model.named_parameters())
    wrong = sorted(set(state) ^ {n for n, p in params.items() if p.requires_grad})
    if wrong:
        raise ValueError(f"{path}: tensors do not match the model (first: {wrong[:3]})")
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor)


def decode_and_score(model, router, policy: str, groups, tokenizer, args, meteor) -> dict[str, Any]:
    from adamix_ds.evaluation.metrics.e2e import score_e2e

    start = time.perf_counter()
    members = args.ensemble_passes if policy == "ensemble" else 1
    outputs = decode_contexts(model, tokenizer, [g["context"] for g in groups],
                              batch_size=args.decode_batch, router=router, inference=policy,
                              ensemble_passes=members)
    seconds = time.perf_counter() - start
    hyps, refs, _ = scored_texts("e2e", outputs, groups)
    result = score_e2e(hyps, refs, meteor=meteor)
    if result.errors:
        raise RuntimeError(f"E2E scoring failed: {result.errors}")
    return {"scores": result.scores, "decode_seconds": seconds, "contexts": len(groups),
            "empty": sum(not h.strip() for h in hyps), "members": members,
            "samples": [{"mr": g["context"], "output": h, "reference": g["references"][0]}
                        for g, h in list(zip(groups, hyps, strict=True))[:3]]}


# --- settings, cache -----------------------------------------------------------------------------
def file_digest(*paths: Path) -> str:
    h = hashlib.sha1()
    for path in paths:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:12]


def settings(method: str, args: argparse.Namespace) -> dict[str, Any]:
    """Everything that decides a run's result besides (method, seed)."""
    cfg = adamix_config(method, 0, args.consistency_weight)
    return {"version": SCRIPT_VERSION, "backbone": args.backbone_digest, "data": args.data_digest,
            "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr[method],
            "weight_decay": args.weight_decay, "warmup": args.warmup,
            "max_grad_norm": args.max_grad_norm, "label_smoothing": args.label_smoothing,
            "max_seq_len": args.max_seq_len, "max_test": args.max_test,
            "ensemble_passes": args.ensemble_passes,
            "adamix": None if cfg is None else {k: v for k, v in cfg.to_dict().items()
                                                if k != "routing_seed"}}


def device_name() -> str:
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def collect(cache: dict[str, Any], args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    rows = {}
    for method in args.methods:
        h = settings_hash(settings(method, args))
        rows[method] = [cache["runs"][k] for k in (f"{method}/seed{s}/{h}" for s in args.seeds)
                        if k in cache["runs"]]
    return rows


def backbone_words(args: argparse.Namespace) -> str:
    report_path = args.backbone / "pretrain_report.json"
    if not report_path.is_file():
        return f"`{args.backbone}`"
    report = json.loads(report_path.read_text())
    c, corpus = report["settings"]["config"], report.get("corpus", {})
    sources = ", ".join(corpus.get("sources", ["unrecorded"]))
    held = " + ".join(f"{s} held-out" for s in corpus.get("heldout_sources", ["unrecorded"]))
    return (f"stand-in GPT-2 {c['n_layer']} layers x {c['n_embd']} ({report['parameters']:,} "
            f"parameters, GPT-2 BPE, {c['n_positions']} positions) pre-trained by "
            f"`launch/pretrain_lm.py` for {report['steps']} steps ({report['train_tokens']:,} "
            f"tokens of {sources} text) in {report['train_seconds'] / 60:.0f} min; held-out "
            f"perplexity {report['heldout_perplexity']:.1f} ({held}); the paper's backbone is "
            "GPT-2 medium (355M)")


# --- main ----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", required=True, help="folder with the E2E train.txt, test.txt")
    parser.add_argument("--backbone", default=str(DEFAULT_BACKBONE),
                        help="the stand-in model directory (launch/pretrain_lm.py output)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--lr", default="", help="overrides, e.g. 'full=1e-4,lora=2e-3'")
    parser.add_argument("--weight_decay", type=float, default=0.01)
    parser.add_argument("--warmup", type=float, default=0.05)
    parser.add_argument("--max_grad_norm", type=float, default=1.0)
    parser.add_argument("--label_smoothing", type=float, default=0.1)
    parser.add_argument("--max_seq_len", type=int, default=192)
    parser.add_argument("--max_test", type=int, default=None,
                        help="first N test MRs only (smoke runs; the report says so)")
    parser.add_argument("--consistency_weight", type=float, default=100.0,
                        help="w of the AdaMix rows (0: routed passes without the term, an "
                             "ablation; the cache keys runs on it)")
    parser.add_argument("--ensemble_passes", type=int, default=4)
    parser.add_argument("--decode_batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--log_every", type=int, default=50)
    parser.add_argument("--work_dir", default=str(REPO / "runs" / "nlg_e2e_small"),
                        help="trained weights of each run (not committed)")
    parser.add_argument("--cache", default=str(REPO / "benchmarks" / "nlg_e2e_small_runs.json"))
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "RESULTS.md"))
    parser.add_argument("--report_only", action="store_true")
    args = parser.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in args.methods if m not in METHODS]
    if bad:
        parser.error(f"--methods: {bad} not in {list(METHODS)}")
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    if args.consistency_weight < 0:
        parser.error(f"--consistency_weight must be >= 0, got {args.consistency_weight}")
    lr = dict(DEFAULT_LR)
    for item in filter(None, (s.strip() for s in args.lr.split(","))):
        name, _, value = item.partition("=")
        if name not in METHODS or not value:
            parser.error(
                f"--lr: expected method=value with method in {list(METHODS)}, got {item!r}"
            )
        lr[name] = float(value)
    args.lr = lr
    args.backbone = Path(args.backbone).expanduser()
    if not (args.backbone / "config.json").is_file():
        parser.error(f"--backbone {args.backbone}: no finished model there; build it with "
                     f"python launch/pretrain_lm.py --data_dir DATA --output_dir {args.backbone}")
    args.data_dir = Path(args.data_dir)
    try:
        args.data_digest = file_digest(resolve_split_file("e2e", "train", args.data_dir),
                                       resolve_split_file("e2e", "test", args.data_dir))
    except FileNotFoundError as err:
        parser.error(f"--data_dir: {err}")
    args.backbone_digest = file_digest(args.backbone / "model.safetensors")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cache_path = Path(args.cache)
    command = shlex.join(sys.argv[1:] if argv is None else argv)  # pastes back into a shell
    if not args.report_only:
        run_all(args, cache_path, command)
    ctx = ReportContext(backbone=backbone_words(args),
                        budget=f"{args.steps} optimizer steps x {args.batch_size} E2E training "
                               f"examples for every row (AdaMix rows run both routed passes of "
                               f"each example); AdamW, linear warm-up {args.warmup:.0%} and decay, "
                               f"label smoothing {args.label_smoothing}, clipping "
                               f"{args.max_grad_norm}, lr " + ", ".join(
                                   f"{m} {args.lr[m]:g}" for m in args.methods),
                        device=device_name(), date=datetime.date.today().isoformat(),
                        command=command, labels=LABELS)
    text = format_report(collect(load_cache(cache_path), args), ctx, args.seeds,
                         {m: policies_of(m) for m in args.methods})
    if args.max_test:
        text = text.replace("the whole E2E test set (630 MRs)",
                            f"the first {args.max_test} E2E test MRs (smoke run)")
    print(text, flush=True)
    append_results(Path(args.results), text)


def _same_training(entry: dict[str, Any], info: dict[str, Any]) -> bool:
    """Whether a retrained run repeats the cached one: equal step count and logged losses."""
    return (entry["steps"] == info["steps"]
            and entry["task_loss_log"] == info["task_loss_log"]
            and entry["consistency_log"] == info["consistency_log"])


def run_all(args: argparse.Namespace, cache_path: Path, command: str) -> None:
    from adamix_ds.evaluation.metrics.meteor import Meteor15

    tokenizer = load_tokenizer(args.backbone)
    dataset, groups, meteor = None, None, None
    try:
        for method in args.methods:
            values = settings(method, args)
            h = settings_hash(values)
            for seed in args.seeds:
                key = f"{method}/seed{seed}/{h}"
                entry = load_cache(cache_path)["runs"].get(key)
                todo = [p for p in policies_of(method)
                        if entry is None or p not in entry["policies"]]
                if not todo:
                    log(f"cache hit: {key}, skipped")
                    continue
                model, router, cfg, trained, serving = build(method, args, seed)
                weights = Path(args.work_dir) / key.replace("/", "_") / "trained.safetensors"
                if entry is None or not weights.is_file():
                    if dataset is None:
                        dataset = load_nlg_dataset("e2e", "train", args.data_dir, tokenizer,
                                                   args.max_seq_len)
                    log(f"[{method} seed {seed}] training: {args.steps} steps x "
                        f"{args.batch_size}, lr {args.lr[method]:g}, trained params {trained:,}, "
                        f"serving params {serving:,}")
                    info = train(model, router, cfg, method, dataset, args, seed,
                                 tokenizer.eos_token_id)
                    save_state(model, weights)
                    if entry is not None and _same_training(entry, info):
                        # --work_dir may be gone (a new machine); training is deterministic, so
                        # a retrained model that logs the same losses keeps the decodes cached.
                        log(f"[{method} seed {seed}] retrained: same losses as the cached run, "
                            f"its {len(entry['policies'])} decodes kept")
                    else:
                        entry = {"method": method, "seed": seed, "trained_params": trained,
                                 "serving_params": serving, "settings": values,
                                 "settings_hash": h, "device": device_name(),
                                 "date": datetime.date.today().isoformat(),
                                 "command": command, "policies": {}, **info}
                        save_run(cache_path, key, entry)
                        todo = list(policies_of(method))
                else:
                    load_state(model, weights)
                if groups is None:
                    groups = split_groups("e2e", "test", str(args.data_dir), limit=args.max_test)
                    meteor = Meteor15()
                for policy in todo:
                    result = decode_and_score(model, router, policy, groups, tokenizer, args,
                                              meteor)
                    entry["policies"][policy] = result
                    save_run(cache_path, key, entry)
                    s = result["scores"]
                    log(f"[{method} seed {seed}] {policy}: BLEU {100 * s['BLEU']:.2f} NIST "
                        f"{s['NIST']:.3f} METEOR {100 * s['METEOR']:.2f} ROUGE_L "
                        f"{100 * s['ROUGE_L']:.2f} CIDEr {s['CIDEr']:.3f}; "
                        f"{result['empty']} empty; decode {result['decode_seconds']:.0f}s")
    finally:
        if meteor is not None:
            meteor.close()


if __name__ == "__main__":
    main()
