"""inject_adamix(model, cfg): put AdaMix layers into a Hugging Face model, freeze the rest.

Targets are resolved by *exact* module-name patterns (``re.fullmatch``), per architecture:
canonical names (q, k, v, o, ffn_in, ffn_gate, ffn_out; adapter placements ffn / attn) map to
regexes below, user regexes are taken as they are. A pattern that matches nothing is an error that
lists the module names the model has.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from .config import AdaMixConfig, _is_pattern
from .layers import AdaMixAdapter, AdaMixLayer, AdaMixLoRA, projection_shape
from .routing import Router

_ANY = r"(?:.*\.)?"  # any prefix (GPT2LMHeadModel has "transformer.", GPT2Model has none)


@dataclass(frozen=True)
class ArchTable:
    """Canonical targets of one architecture family.

    lora: canonical name -> (module regex, part); part = index of the third of a fused QKV
        output (GPT-2's c_attn) or None for the whole output.
    adapter: placement -> module regex of the projection whose output the adapter follows.
    """

    lora: dict[str, tuple[str, int | None]]
    adapter: dict[str, str]


_GPT2 = ArchTable(
    lora={
        "q": (_ANY + r"h\.\d+\.attn\.c_attn", 0),
        "k": (_ANY + r"h\.\d+\.attn\.c_attn", 1),
        "v": (_ANY + r"h\.\d+\.attn\.c_attn", 2),
        "o": (_ANY + r"h\.\d+\.attn\.c_proj", None),
        "ffn_in": (_ANY + r"h\.\d+\.mlp\.c_fc", None),
        "ffn_out": (_ANY + r"h\.\d+\.mlp\.c_proj", None),
    },
    adapter={"ffn": _ANY + r"h\.\d+\.mlp\.c_proj", "attn": _ANY + r"h\.\d+\.attn\.c_proj"},
)
_BERT = ArchTable(
    lora={
        "q": (_ANY + r"layer\.\d+\.attention\.self\.query", None),
        "k": (_ANY + r"layer\.\d+\.attention\.self\.key", None),
        "v": (_ANY + r"layer\.\d+\.attention\.self\.value", None),
        "o": (_ANY + r"layer\.\d+\.attention\.output\.dense", None),
        "ffn_in": (_ANY + r"layer\.\d+\.intermediate\.dense", None),
        "ffn_out": (_ANY + r"layer\.\d+\.output\.dense", None),
    },
    # After the FFN output projection, before dropout + LayerNorm (the paper's placement).
    adapter={"ffn": _ANY + r"layer\.\d+\.output\.dense",
             "attn": _ANY + r"layer\.\d+\.attention\.output\.dense"},
)
_LLAMA = ArchTable(
    lora={
        "q": (_ANY + r"layers\.\d+\.self_attn\.q_proj", None),
        "k": (_ANY + r"layers\.\d+\.self_attn\.k_proj", None),
        "v": (_ANY + r"layers\.\d+\.self_attn\.v_proj", None),
        "o": (_ANY + r"layers\.\d+\.self_attn\.o_proj", None),
        "ffn_in": (_ANY + r"layers\.\d+\.mlp\.up_proj", None),
        "ffn_gate": (_ANY + r"layers\.\d+\.mlp\.gate_proj", None),
        "ffn_out": (_ANY + r"layers\.\d+\.mlp\.down_proj", None),
    },
    adapter={"ffn": _ANY + r"layers\.\d+\.mlp\.down_proj",
             "attn": _ANY + r"layers\.\d+\.self_attn\.o_proj"},
)
ARCH_TABLES: dict[str, ArchTable] = {
    "gpt2": _GPT2,
    "bert": _BERT, "roberta": _BERT, "xlm-roberta": _BERT,
    **{t: _LLAMA for t in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "olmo",
                           "olmo2", "granite")},
}


@dataclass
class InjectionReport:
    """What inject_adamix did, and the parameter counts the paper reports."""

    router: Router = field(repr=False)
    model_type: str
    replaced: list[dict[str, Any]]
    backbone_params: int
    trainable_params: int
    adaptation_params: int
    inference_params: int

    @property
    def adapted_modules(self) -> int:
        return len(self.replaced)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "router"}
        out["adapted_modules"] = self.adapted_modules
        return out


def full_numel(param: torch.Tensor) -> int:
    """Elements of the whole parameter, also when ZeRO-3 holds only a partition of it here."""
    return getattr(param, "ds_numel", param.numel())


def adamix_layers(model: nn.Module) -> dict[str, AdaMixLayer]:
    """Name -> AdaMix layer, in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, AdaMixLayer)}


def adaptation_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Full name -> parameter of every expert tensor in the model."""
    return {f"{name}.{pname}": p for name, layer in adamix_layers(model).items()
            for pname, p in layer.adapter_params()}


def saved_parameters(model: nn.Module, cfg: AdaMixConfig) -> dict[str, nn.Parameter]:
    """What an adaptation checkpoint holds: the expert tensors plus the ``extra_trainable``
    parameters (e.g. a classification head), so nothing that was trained is left out."""
    params = adaptation_parameters(model)
    for name, p in model.named_parameters():
        if any(re.fullmatch(pattern, name) for pattern in cfg.extra_trainable):
            params.setdefault(name, p)
    return params


def _module_inventory(model: nn.Module) -> str:
    """Module names with layer indices collapsed, for error messages."""
    seen: dict[str, str] = {}
    for name, module in model.named_modules():
        if name:
            seen.setdefault(re.sub(r"\.\d+(?=\.|$)", ".{i}", name), type(module).__name__)
    return "\n  ".join(f"{n} ({t})" for n, t in seen.items())


def _resolve(model: nn.Module, cfg: AdaMixConfig, model_type: str) -> dict[str, list[int | None]]:
    """Module name -> fused-QKV parts to adapt ([None] = the whole output)."""
    table = ARCH_TABLES.get(model_type)
    if cfg.method == "lora":
        wanted = list(cfg.targets)
    else:
        wanted = ["ffn"] if cfg.placement == "ffn" else ["attn", "ffn"]
    names = [n for n, _ in model.named_modules() if n]
    plan: dict[str, list[int | None]] = defaultdict(list)
    for target in wanted:
        if _is_pattern(target):
            pattern, part = target, None
        elif table is None:
            raise ValueError(
                f"no canonical targets are known for model_type {model_type!r} (known: "
                f"{sorted(ARCH_TABLES)}); give targets as regexes over module names.")
        elif cfg.method == "lora":
            if target not in table.lora:
                raise ValueError(f"targets: {target!r} does not exist for model_type "
                                 f"{model_type!r}; available: {sorted(table.lora)}")
            pattern, part = table.lora[target]
        else:
            pattern, part = table.adapter[target], None
        hits = [n for n in names if re.fullmatch(pattern, n)]
        if not hits:
            raise ValueError(f"target {target!r} (pattern {pattern!r}) matches no module of this "
                             f"{model_type} model. Modules:\n  {_module_inventory(model)}")
        for name in hits:
            if part in plan[name] or (plan[name] and (part is None) != (plan[name][0] is None)):
                raise ValueError(f"module {name} is targeted twice (target {target!r})")
            plan[name].append(part)
    return plan


def _slices(parts: list[int | None], d_out: int, name: str) -> dict[str, tuple[int, int]]:
    if parts == [None]:
        return {"all": (0, d_out)}
    if d_out % 3:
        raise ValueError(f"{name}: fused QKV output {d_out} is not divisible by 3")
    third = d_out // 3
    return {"qkv"[p]: (p * third, (p + 1) * third) for p in sorted(parts)}


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def inject_adamix(model: nn.Module, cfg: AdaMixConfig, router: Router | None = None
                  ) -> InjectionReport:
    """Replace the targeted projections by AdaMix layers (in place) and freeze everything else.

    Returns a report with the router shared by all layers and the parameter counts.
    """
    if adamix_layers(model):
        raise ValueError("model already contains AdaMix layers; inject once per model")
    model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    router = router or Router(cfg.routing_seed, cfg.inference)
    plan = _resolve(model, cfg, model_type)
    backbone_params = sum(full_numel(p) for p in model.parameters())

    replaced = []
    for name, parts in plan.items():
        base = model.get_submodule(name)
        if not isinstance(base, (nn.Linear, Conv1D)):
            raise TypeError(f"target module {name} is a {type(base).__name__}; AdaMix adapts "
                            "nn.Linear and GPT-2 Conv1D projections")
        d_in, d_out = projection_shape(base)
        if cfg.method == "lora":
            slices = _slices(parts, d_out, name)
            layer: AdaMixLayer = AdaMixLoRA(base, slices, cfg.rank, cfg.num_experts, cfg.share,
                                            cfg.alpha, cfg.lora_dropout, router, name,
                                            cfg.expert_init)
        else:
            slices = {"adapter": (0, d_out)}
            layer = AdaMixAdapter(base, cfg.bottleneck, cfg.num_experts, cfg.share,
                                  cfg.activation, router, name, cfg.expert_init)
        layer.to(device=base.weight.device, dtype=base.weight.dtype)
        _set_submodule(model, name, layer)
        replaced.append({"name": name, "base": type(base).__name__, "d_in": d_in,
                         "d_out": d_out, "slices": {k: list(v) for k, v in slices.items()}})

    _freeze_all_but_adaptation(model, cfg)
    adaptation = adaptation_parameters(model)
    return InjectionReport(
        router=router, model_type=model_type, replaced=replaced,
        backbone_params=backbone_params,
        trainable_params=sum(full_numel(p) for p in model.parameters() if p.requires_grad),
        adaptation_params=sum(p.numel() for p in adaptation.values()),
        inference_params=sum(m.inference_param_count() for m in adamix_layers(model).values()),
    )


def _freeze_all_but_adaptation(model: nn.Module, cfg: AdaMixConfig) -> None:
    for p in model.parameters():
        p.requires_grad_(False)
    for p in adaptation_parameters(model).values():
        p.requires_grad_(True)
    named = dict(model.named_parameters())
    for pattern in cfg.extra_trainable:
        hits = [n for n in named if re.fullmatch(pattern, n)]
        if not hits:
            raise ValueError(f"extra_trainable pattern {pattern!r} matches no parameter; "
                             f"parameters include {list(named)[:8]} ...")
        for n in hits:
            named[n].requires_grad_(True)
