"""Pre-train a small GPT-2 from random init as a plain causal LM: the stand-in pretrained decoder.

Pure torch on one process (no DeepSpeed): the stand-in is small enough for a CPU. The run is
resumable: every ``save_every`` steps the model, optimizer and step go atomically to
``<output_dir>/train_state.pt``; data order and dropout are functions of (seed, step), so a
resumed run continues exactly. At the end the output directory becomes a Hugging Face model
directory (``config.json``, ``model.safetensors``, tokenizer files) that ``load_backbone(dir,
init="pretrained")`` loads, plus ``pretrain_report.json`` with the held-out perplexity.
``config.json`` is written last, so a directory without it was never finished.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import GPT2Config, GPT2LMHeadModel

REPORT_FILE = "pretrain_report.json"
STATE_FILE = "train_state.pt"


@dataclass
class PretrainConfig:
    """Model shape and schedule of a stand-in pre-training run.

    Attributes:
        n_layer, n_embd, n_head, n_positions: the GPT-2 shape (vocabulary: the GPT-2 BPE).
        block_size: tokens per training sequence (<= n_positions).
        batch_size: sequences per optimizer step.
        max_steps: optimizer steps; warmup_steps of linear warm-up, then cosine decay of the
            learning rate to ``lr * min_lr_ratio``.
        dropout: GPT-2's residual / embedding / attention dropout during pre-training (and in
            the saved config).
        eval_blocks: held-out blocks scored for the perplexity.
    """

    n_layer: int = 6
    n_embd: int = 256
    n_head: int = 4
    n_positions: int = 256
    block_size: int = 256
    batch_size: int = 8
    max_steps: int = 1200
    lr: float = 1.5e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    dropout: float = 0.0
    seed: int = 0
    eval_blocks: int = 64

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_embd", "n_head", "n_positions", "block_size", "batch_size",
                     "max_steps", "eval_blocks"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.block_size > self.n_positions:
            raise ValueError(f"block_size={self.block_size} exceeds n_positions={self.n_positions}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def model_config(self) -> GPT2Config:
        return GPT2Config(n_layer=self.n_layer, n_embd=self.n_embd, n_head=self.n_head,
                          n_positions=self.n_positions, resid_pdrop=self.dropout,
                          embd_pdrop=self.dropout, attn_pdrop=self.dropout)


def learning_rate(cfg: PretrainConfig, step: int) -> float:
    """Linear warm-up to ``lr``, then cosine to ``lr * min_lr_ratio`` at ``max_steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    low = cfg.lr * cfg.min_lr_ratio
    return low + 0.5 * (cfg.lr - low) * (1.0 + math.cos(math.pi * progress))


def batch_indices(num_blocks: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """The block indices of optimizer step ``step``: epochs of seeded permutations, read in
    order, so any step's batch is known without replaying the ones before it."""
    start = step * batch_size
    out = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), num_blocks)
        perm = torch.randperm(num_blocks, generator=torch.Generator().manual_seed(
            1_000_003 * seed + epoch))
        out += perm[offset: offset + batch_size - len(out)].tolist()
    return torch.tensor(out, dtype=torch.long)


@torch.no_grad()
def heldout_loss(model: GPT2LMHeadModel, blocks: torch.Tensor, batch_size: int) -> float:
    """Mean next-token cross-entropy (nats) over every predicted token of ``blocks`` (N, T)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, blocks.shape[0], batch_size):
        ids = blocks[start:start + batch_size]
        logits = model(input_ids=ids).logits[:, :-1].float()
        total += torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum").item()
        count += ids[:, 1:].numel()
    model.train(was_training)
    return total / count


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def finished_report(output_dir: str | Path) -> dict[str, Any] | None:
    """The report of a finished pre-training in ``output_dir``, or ``None``."""
    out = Path(output_dir)
    if not ((out / "config.json").is_file() and (out / REPORT_FILE).is_file()):
        return None
    return json.loads((out / REPORT_FILE).read_text())


def pretrain(cfg: PretrainConfig, train_blocks: torch.Tensor, heldout_blocks: torch.Tensor,
             tokenizer: Any, output_dir: str | Path, corpus_info: dict[str, Any],
             save_every: int = 50, log_every: int = 10, resume: bool = True,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train (or resume, or return the finished report) and write the model directory.

    Args:
        train_blocks / heldout_blocks: (N, block_size) token ids (:func:`pack_blocks`).
        corpus_info: what the report says about the data (sources, counts, digest); its
            ``digest`` must match a checkpoint's for the run to resume from it.
    Returns:
        The report (also in ``<output_dir>/pretrain_report.json``).
    """
    out = Path(output_dir)
    done = finished_report(out)
    settings = {"config": cfg.to_dict(), "corpus_digest": corpus_info.get("digest")}
    if done is not None and resume:
        if done.get("settings") != settings:
            raise ValueError(f"{out} holds a finished pre-training with other settings "
                             f"({done.get('settings')}); pass another output directory")
        log(f"pretrain: {out} is already finished (held-out perplexity "
            f"{done['heldout_perplexity']:.2f}); nothing to do")
        return done
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model = GPT2LMHeadModel(cfg.model_config())
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=cfg.lr, betas=(0.9, 0.95))
    step, seconds, history = 0, 0.0, []
    state_path = out / STATE_FILE
    if resume and state_path.is_file():
        state = torch.load(state_path, weights_only=False)
        if state["settings"] != settings:
            raise ValueError(f"{state_path}: saved with other settings {state['settings']}; "
                             f"now {settings}. Pass --no_resume to start over")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, seconds, history = state["step"], state["seconds"], state["history"]
        log(f"pretrain: resumed at step {step}/{cfg.max_steps}")
    model.train()
    tokens_per_step = cfg.batch_size * cfg.block_size
    window_loss, window_start = 0.0, time.perf_counter()
    tick = time.perf_counter()
    while step < cfg.max_steps:
        torch.manual_seed(1_000_003 * cfg.seed + step)  # dropout: a function of (seed, step)
        ids = train_blocks[batch_indices(train_blocks.shape[0], cfg.batch_size, cfg.seed, step)]
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(cfg, step)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        window_loss += loss.item()
        if step % log_every == 0 or step == cfg.max_steps:
            now = time.perf_counter()
            seconds += now - tick
            tick = now
            n = (step - 1) % log_every + 1
            rate = n * tokens_per_step / (now - window_start)
            eta = (cfg.max_steps - step) * tokens_per_step / rate
            history.append({"step": step, "loss": window_loss / n, "tokens_per_s": rate})
            log(f"pretrain: step {step}/{cfg.max_steps} loss {window_loss / n:.3f} "
                f"lr {learning_rate(cfg, step - 1):.2e} {rate:.0f} tok/s eta {eta / 60:.1f} min")
            window_loss, window_start = 0.0, now
        if step % save_every == 0 and step < cfg.max_steps:
            seconds += time.perf_counter() - tick
            tick = time.perf_counter()
            _atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                "step": step, "seconds": seconds, "history": history,
                                "settings": settings}, state_path)
    seconds += time.perf_counter() - tick
    loss = heldout_loss(model, heldout_blocks[: cfg.eval_blocks], cfg.batch_size)
    report = {"settings": settings, "corpus": corpus_info, "steps": step,
              "train_tokens": step * tokens_per_step, "train_seconds": round(seconds, 1),
              "final_train_loss": history[-1]["loss"] if history else None,
              "heldout_blocks": min(cfg.eval_blocks, heldout_blocks.shape[0]),
              "heldout_loss": loss, "heldout_perplexity": math.exp(loss),
              "parameters": sum(p.numel() for p in model.parameters()),
              "torch": torch.__version__, "history": history}
    _export(model, tokenizer, out, report)
    if state_path.is_file():
        state_path.unlink()  # the optimizer state is 2x the model; the run is finished
    log(f"pretrain: done, held-out perplexity {report['heldout_perplexity']:.2f} on "
        f"{report['heldout_blocks']} blocks; model in {out}")
    return report


def _export(model: GPT2LMHeadModel, tokenizer: Any, out: Path, report: dict[str, Any]) -> None:
    """Model files into ``out``, each by rename; ``config.json`` last (see module docstring)."""
    tmp = out / f".export-tmp-{os.getpid()}"
    tmp.mkdir()
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    (tmp / REPORT_FILE).write_text(json.dumps(report, indent=1) + "\n")
    files = sorted(tmp.iterdir(), key=lambda f: f.name == "config.json")
    for file in files:
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(file, out / file.name)
    tmp.rmdir()
