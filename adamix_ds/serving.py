"""A dense Hugging Face checkpoint of the merged model, for engines that know nothing of AdaMix.

``export_merged_model`` writes the backbone's own state dict, with each adapted projection's
weight replaced by base + merged LoRA update (Eq. 3 averages, or an earlier ``merge_experts``)
and the expert tensors left out, through the model's ``save_pretrained``: ``config.json``,
safetensors shards and, when given, the tokenizer. ``AutoModelForCausalLM.from_pretrained``, vLLM
and TGI load it as they load the backbone, at the backbone's cost. The model passed in is not
modified. Houlsby adapters are nonlinear and cannot be folded: refused.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import atomic_directory
from .inject import adamix_layers
from .layers import AdaMixLoRA


def merged_dense_state_dict(model: nn.Module, dtype: torch.dtype | None = None
                            ) -> dict[str, torch.Tensor]:
    """The backbone's state dict (its own key names) with the merged updates folded in.

    ``<layer>.base.<t>`` becomes ``<layer>.<t>`` (the weight with the update added), and
    ``<layer>.experts.*`` is dropped. The fold runs in the model's dtype, the cast after it.
    """
    layers = adamix_layers(model)
    if not layers:
        raise ValueError("export_merged_model: the model has no AdaMix layers")
    adapters = sorted(n for n, m in layers.items() if not isinstance(m, AdaMixLoRA))
    if adapters:
        raise ValueError(f"export_merged_model: {adapters[:3]} are Houlsby adapters, which are "
                         "nonlinear and cannot be folded into a dense checkpoint; serve them "
                         "with adamix-ds (save_adaptation) instead")
    if any(m.folded for m in layers.values()):
        raise ValueError("export_merged_model: unfold the model first (its base weights "
                         "already hold the update)")
    folded = {f"{name}.base.weight": layer.folded_weight() for name, layer in layers.items()}
    state = {}
    for key, tensor in model.state_dict().items():
        owner = next((n for n in layers if key.startswith(n + ".")), None)
        if owner is not None:
            rest = key[len(owner) + 1:]
            if not rest.startswith("base."):
                continue                                   # experts: folded in
            tensor = folded.get(key, tensor)
            key = f"{owner}.{rest.removeprefix('base.')}"
        state[key] = tensor if dtype is None else tensor.to(dtype)
    return state


def export_merged_model(model: nn.Module, directory: str | Path, tokenizer: Any = None,
                        dtype: torch.dtype | None = None,
                        max_shard_size: str | int = "5GB") -> Path:
    """Write ``model`` (a Hugging Face model with AdaMix LoRA layers) with the merged update
    folded in, as a standard model directory; atomically (a crash leaves no half directory).

    Args:
        model: injected and loaded (e.g. from an adaptation checkpoint); not folded.
        directory: the output directory (replaced if it exists).
        tokenizer: saved beside the weights when given (``save_pretrained``).
        dtype: the saved weights' dtype (default: the model's). Load the backbone in float32 to
            fold without bf16 rounding, then save in bf16.
        max_shard_size: ``save_pretrained``'s shard size.
    """
    if not hasattr(model, "save_pretrained"):
        raise TypeError(f"export_merged_model needs a Hugging Face model, got "
                        f"{type(model).__name__}")
    state = merged_dense_state_dict(model, dtype)
    with atomic_directory(directory) as tmp:
        model.save_pretrained(tmp, state_dict=state, max_shard_size=max_shard_size)
        if dtype is not None:
            _set_config_dtype(tmp / "config.json", dtype)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return Path(directory)


def _set_config_dtype(path: Path, dtype: torch.dtype) -> None:
    """config.json names the dtype the weights were saved in (what loaders default to)."""
    config = json.loads(path.read_text())
    config["dtype"] = str(dtype).removeprefix("torch.")
    config.pop("torch_dtype", None)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
