"""Adaptation-only checkpoints (safetensors + JSON, MB not GB) and PEFT export.

Layout of a saved directory::

    adamix_config.json        format, AdaMix config, merge state, adapted modules and slices
    adamix_model.safetensors  "<module>.experts.<slice>.<tensor>" -> tensor

Directories are written atomically: into a temporary sibling, then renamed into place, so a crash
leaves either the previous complete checkpoint or the new complete one, never a half-written one.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .config import AdaMixConfig
from .inject import adamix_layers, saved_parameters
from .layers import AdaMixLoRA, projection_shape
from .merging import merge_experts

FORMAT = "adamix-ds/1"
CONFIG_FILE, WEIGHTS_FILE = "adamix_config.json", "adamix_model.safetensors"
# Fields that decide tensor shapes / layer placement: a checkpoint only loads where they agree.
_STRUCTURAL_FIELDS = ("method", "num_experts", "share", "rank", "targets", "bottleneck",
                      "placement", "activation")


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` only once the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        for file in tmp.iterdir():  # flush file contents before the rename makes them visible
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def adaptation_state_dict(model: nn.Module, cfg: AdaMixConfig) -> dict[str, torch.Tensor]:
    """Detached CPU copies of every expert tensor and extra-trainable parameter, by full name."""
    return {name: p.detach().to("cpu").contiguous().clone()
            for name, p in saved_parameters(model, cfg).items()}


def _merge_state(model: nn.Module) -> str | None:
    modes = {layer.merged_mode for layer in adamix_layers(model).values()}
    if len(modes) != 1:
        raise ValueError(f"layers are in different merge states {modes}; merge all or none")
    return modes.pop()


def save_adaptation(model: nn.Module, directory: str | Path, cfg: AdaMixConfig,
                    state: dict[str, torch.Tensor] | None = None,
                    extra: dict[str, Any] | None = None) -> Path:
    """Save the mixture (or the merged module) of ``model`` to ``directory``, atomically.

    ``state`` overrides the tensors (e.g. gathered from ZeRO-3 partitions by the trainer).
    """
    state = adaptation_state_dict(model, cfg) if state is None else state
    empty = [n for n, t in state.items() if t.numel() == 0]
    if empty:
        raise ValueError(f"refusing to save empty tensors (ZeRO-3 partitions not gathered?): "
                         f"{empty[:4]}")
    meta = {
        "format": FORMAT,
        "adamix": cfg.to_dict(),
        "merged": _merge_state(model),
        "layers": {n: {s: list(r) for s, r in m.slices.items()}
                   for n, m in adamix_layers(model).items()},
        **(extra or {}),
    }
    with atomic_directory(directory) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT})
        meta["weights_sha256"] = file_sha256(tmp / WEIGHTS_FILE)
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return Path(directory)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


# Weight files that are pickles: loading one can run arbitrary code, so none is ever loaded.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


def refuse_pickles(directory: Path, expected: str) -> None:
    """A clear error when ``expected`` (a safetensors file) is absent from ``directory``, naming
    any pickled weight file found instead."""
    if (directory / expected).is_file():
        return
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(f"{directory}: weights are {pickles} (pickle), not {expected}: refused, "
                         "since unpickling can run code; re-save them as safetensors")
    raise FileNotFoundError(f"{directory / expected}: no such file")


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """``safetensors.torch.load_file`` with an error that names the file when it is not one."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from err


def read_adaptation_config(directory: str | Path) -> tuple[AdaMixConfig, dict[str, Any]]:
    """(config, full metadata) of a saved adaptation directory."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not an AdaMix checkpoint (no {CONFIG_FILE})")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}:{err.colno}: invalid JSON: {err.msg}") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ValueError(f"{path}: format {found!r}, expected {FORMAT!r}")
    missing = [k for k in ("adamix", "merged") if k not in meta]
    if missing:
        raise ValueError(f"{path}: missing field(s) {missing}")
    return AdaMixConfig.from_dict(meta["adamix"], source=str(path)), meta


@torch.no_grad()
def load_adaptation(model: nn.Module, directory: str | Path, cfg: AdaMixConfig) -> dict[str, Any]:
    """Load a saved mixture or merged module into a model injected with ``cfg``.

    A merged checkpoint is loaded by merging the model's layers first (same mode), so the tensors
    have the saved shapes. Missing, unexpected or mis-shaped tensors are errors naming them.
    """
    saved_cfg, meta = read_adaptation_config(directory)
    diffs = [f"{f}: checkpoint {getattr(saved_cfg, f)!r} vs model {getattr(cfg, f)!r}"
             for f in _STRUCTURAL_FIELDS if getattr(saved_cfg, f) != getattr(cfg, f)]
    if diffs:
        raise ValueError(
            f"{directory}: AdaMix config does not match the model: " + "; ".join(diffs)
        )
    if meta["merged"] and _merge_state(model) != meta["merged"]:
        merge_experts(model, meta["merged"])
    params = saved_parameters(model, cfg)
    directory = Path(directory)
    refuse_pickles(directory, WEIGHTS_FILE)
    expected = meta.get("weights_sha256")  # absent in directories saved before it existed
    if expected is not None and file_sha256(directory / WEIGHTS_FILE) != expected:
        raise ValueError(f"{directory / WEIGHTS_FILE}: its sha256 differs from the one in "
                         f"{CONFIG_FILE} (a damaged or replaced file)")
    state = read_safetensors(directory / WEIGHTS_FILE)
    missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or unexpected:
        raise ValueError(f"{directory}: missing tensors {missing[:5]}, unexpected {unexpected[:5]}")
    for name, param in params.items():
        if param.shape != state[name].shape:
            raise ValueError(f"{directory}: {name} has shape {tuple(state[name].shape)}, model "
                             f"expects {tuple(param.shape)}")
        param.copy_(state[name])
    return meta


# --- PEFT export ----------------------------------------------------------------------------------
def _peft_factors(layer: AdaMixLoRA) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One PEFT LoRA (lora_A (R, d_in), lora_B (d_out, R)) equal to the layer's merged update.

    Slices of a fused projection (GPT-2 c_attn Q and V) become one LoRA of rank sum(r_s): A stacks
    the slices' A, B is block-diagonal, each block placed on its slice's output rows.
    """
    _, d_out = projection_shape(layer.base)
    blocks_a, blocks_b, scales = [], [], set()
    for slice_name, (start, stop) in layer.slices.items():
        experts = layer.experts[slice_name]
        a, b = experts.merged_weights()                   # (d_in, r), (r, d_slice)
        b_rows = a.new_zeros(d_out, a.shape[1])           # (d_out, r)
        b_rows[start:stop] = b.T
        blocks_a.append(a.T)
        blocks_b.append(b_rows)
        scales.add(experts.scale)
    (scale,) = scales
    lora_a = torch.cat(blocks_a, dim=0)                   # (R, d_in)
    lora_b = torch.cat(blocks_b, dim=1)                   # (d_out, R)
    return lora_a, lora_b, scale


def export_peft(model: nn.Module, directory: str | Path, cfg: AdaMixConfig,
                base_model_name_or_path: str | None = None) -> Path:
    """Write the merged LoRA as a PEFT adapter (``PeftModel.from_pretrained`` loads it).

    Uses each layer's merged weights: Eq. 3 averages, or the result of an earlier
    ``merge_experts`` (e.g. ``product_svd``). Scale alpha/r is kept by alpha_peft = scale * R.
    """
    try:
        from peft import LoraConfig
    except ImportError as err:
        raise ImportError("export_peft needs the `peft` package: pip install peft") from err
    if cfg.method != "lora":
        raise ValueError("PEFT has no Houlsby-adapter type: export_peft supports method='lora'; "
                         "use save_adaptation for adapters")
    if cfg.extra_trainable:
        raise ValueError(f"export_peft writes LoRA weights only; extra_trainable parameters "
                         f"{list(cfg.extra_trainable)} would be dropped: use save_adaptation")
    layers = {n: m for n, m in adamix_layers(model).items() if isinstance(m, AdaMixLoRA)}
    if any(m.folded for m in layers.values()):
        raise ValueError("unfold the model before exporting (folded layers would apply twice)")
    kinds = {type(m.base).__name__ for m in layers.values()}
    if len(kinds) != 1:
        raise ValueError(f"PEFT's fan_in_fan_out is global; targets mix {sorted(kinds)}")

    tensors, ranks, alphas = {}, {}, {}
    for name, layer in layers.items():
        lora_a, lora_b, scale = _peft_factors(layer)
        tensors[f"base_model.model.{name}.lora_A.weight"] = lora_a.detach().cpu().contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = lora_b.detach().cpu().contiguous()
        ranks[name], alphas[name] = lora_a.shape[0], scale * lora_a.shape[0]
    rank, alpha = Counter(zip(ranks.values(), alphas.values(), strict=True)).most_common(1)[0][0]
    peft_cfg = LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=cfg.lora_dropout, bias="none",
        target_modules=sorted(layers), fan_in_fan_out=kinds == {"Conv1D"},
        rank_pattern={re.escape(n): r for n, r in ranks.items() if r != rank},
        alpha_pattern={re.escape(n): a for n, a in alphas.items() if a != alpha},
        base_model_name_or_path=base_model_name_or_path,
    )
    with atomic_directory(directory) as tmp:
        peft_cfg.save_pretrained(str(tmp))
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
    return Path(directory)
