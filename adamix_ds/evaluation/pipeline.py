"""Checkpoint -> model for decoding -> outputs on disk -> scores: the pieces the launch scripts use.

A checkpoint is either an AdaMix adaptation directory (``adamix_config.json`` + safetensors,
written by the trainer or ``adamix-ds merge``; its metadata carries the run's preset, so the
backbone, its random init seed and the data set are found without flags) or a PEFT export
(``adapter_config.json``, written by ``adamix-ds export``), which is merged into the backbone.
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..backbones import load_backbone
from ..checkpoint import (
    CONFIG_FILE,
    atomic_directory,
    load_adaptation,
    read_adaptation_config,
    refuse_pickles,
)
from ..config import AdaMixConfig
from ..data import group_references, load_nlg_records, load_tokenizer, tokenizer_source
from ..inject import inject_adamix
from ..merging import fold_lora, merge_experts
from ..routing import Router
from .metrics.base import MetricResult

TASKS = ("e2e", "webnlg", "dart")
# The paper's WebNLG / DART files hold at most 6 references per input (LoRA gpt2_decode.py
# --ref_num 6, GenerationEval -nr 6).
MAX_REFERENCES = {"webnlg": 6, "dart": 6}


@dataclass
class DecodingModel:
    """A model ready to decode, with what is needed to route it and to find its data.

    Attributes:
        model: the causal LM (AdaMix-injected, or a PEFT model merged into the backbone).
        router: the AdaMix router (``None`` for a PEFT export: no experts to route).
        tokenizer: the run's GPT-2 BPE.
        preset: the training preset stored with the checkpoint (``{}`` if none).
        config: the AdaMix config (``None`` for a PEFT export).
        source: ``adaptation`` | ``peft``.
    """

    model: nn.Module
    router: Router | None
    tokenizer: Any
    preset: dict[str, Any]
    config: AdaMixConfig | None
    source: str


def _tokenizer_for(preset: dict[str, Any], backbone: str, override: str | None) -> Any:
    """The override, else the run's tokenizer (as the trainer chose it)."""
    return load_tokenizer(override or tokenizer_source(preset.get("tokenizer"), backbone))


def load_decoding_model(checkpoint: str | Path, backbone: str | None = None,
                        init: str | None = None, tokenizer: str | None = None,
                        merge: bool = True, dtype: torch.dtype | None = None,
                        device: torch.device | None = None) -> DecodingModel:
    """Build the backbone, load the adaptation, and (``merge``) serve the merged experts.

    Args:
        checkpoint: adaptation directory or PEFT export directory.
        backbone / init / tokenizer: override the preset stored in the checkpoint (a PEFT export
            has none: ``backbone`` is then its ``base_model_name_or_path`` unless given).
        merge: average the experts (Eq. 3) and fold LoRA updates into the base weights, so
            decoding costs what the backbone alone costs; ``False`` keeps the mixture for the
            routing ablations.
    """
    path = Path(checkpoint)
    if (path / CONFIG_FILE).is_file():
        cfg, meta = read_adaptation_config(path)
        preset = meta.get("preset") or {}
        name = backbone or preset.get("backbone")
        if name is None:
            raise ValueError(f"{path}: the checkpoint stores no preset; pass --backbone")
        mode = init or preset.get("init", "pretrained")
        # The same call as the trainer's, so a random-init backbone gets the same seeded weights.
        model = load_backbone(name, init=mode, seed=preset.get("train", {}).get("seed", 0),
                              **(preset.get("backbone_config") or {}))
        router = inject_adamix(model, cfg).router
        load_adaptation(model, path, cfg)
        if merge:
            if meta.get("merged") is None:
                merge_experts(model, "average")
            if cfg.method == "lora":
                fold_lora(model)
        result = DecodingModel(model, router, _tokenizer_for(preset, name, tokenizer), preset, cfg,
                               "adaptation")
    elif (path / "adapter_config.json").is_file():
        result = _load_peft(path, backbone, init or "pretrained", tokenizer)
    else:
        raise FileNotFoundError(f"{path}: neither an AdaMix adaptation ({CONFIG_FILE}) nor a PEFT "
                                "export (adapter_config.json)")
    result.model.to(device=device, dtype=dtype).eval()
    return result


def _load_peft(path: Path, backbone: str | None, init: str, tokenizer: str | None
               ) -> DecodingModel:
    from peft import PeftConfig, PeftModel

    base_name = backbone or PeftConfig.from_pretrained(str(path)).base_model_name_or_path
    if not base_name:
        raise ValueError(f"{path}: the PEFT export names no base model; pass --backbone")
    refuse_pickles(path, "adapter_model.safetensors")  # PEFT would fall back to torch.load
    base = load_backbone(base_name, init=init)
    model = PeftModel.from_pretrained(base, str(path)).merge_and_unload()
    return DecodingModel(model, None, _tokenizer_for({}, base_name, tokenizer), {}, None, "peft")


def split_groups(task: str, split: str, data_dir: str | None, limit: int | None = None
                ) -> list[dict[str, Any]]:
    """The unique contexts of a split with their grouped references, in the official order."""
    if task not in TASKS:
        raise ValueError(f"--task must be one of {list(TASKS)}, got {task!r}")
    groups = group_references(load_nlg_records(task, split, data_dir))
    return groups[:limit] if limit else groups


def one_line(text: str) -> str:
    """An output as one line of the official formats (a generated newline becomes a space)."""
    return re.sub(r"\s*\n\s*", " ", text).strip()


def scored_texts(task: str, hypotheses: Sequence[str], groups: Sequence[dict[str, Any]]
                 ) -> tuple[list[str], list[list[str]], int]:
    """The texts the paper's pipeline scores: ``(hypotheses, references, references dropped)``.

    E2E: as decoded (the e2e-metrics scorer tokenizes itself). WebNLG / DART: lower-cased and
    split into word / punctuation tokens (``gpt2_decode.py --tokenize --lower``), at most
    ``MAX_REFERENCES`` references per input; the count of references beyond it is returned so
    the caller can report it.
    """
    if len(groups) != len(hypotheses):
        raise ValueError(f"{len(hypotheses)} outputs for {len(groups)} contexts")
    hyps = [one_line(h) for h in hypotheses]
    refs = [[one_line(r) for r in g["references"]] for g in groups]
    if task not in MAX_REFERENCES:
        return hyps, refs, 0
    from .metrics.webnlg import lora_postprocess

    cap = MAX_REFERENCES[task]
    dropped = sum(max(0, len(r) - cap) for r in refs)
    return ([lora_postprocess(h) for h in hyps],
            [[lora_postprocess(r) for r in group[:cap]] for group in refs], dropped)


def write_generation(directory: str | Path, task: str, groups: Sequence[dict[str, Any]],
                     hypotheses: Sequence[str], meta: dict[str, Any]) -> Path:
    """Write one decode, atomically, in the scorers' formats (:func:`scored_texts`).

    Files: ``hypotheses.txt`` (one output per line, official order), ``references.txt`` (each
    context's references, groups separated by a blank line: the E2E scorer's format; both as
    scored), ``hypotheses_raw.txt`` (WebNLG / DART: the outputs before lower-casing and
    tokenizing), ``contexts.txt``, ``categories.txt`` (WebNLG), ``generation.json`` (settings,
    timing, references dropped by the 6-reference cap).
    """
    hyps, refs, dropped = scored_texts(task, hypotheses, groups)
    with atomic_directory(directory) as tmp:
        (tmp / "hypotheses.txt").write_text("".join(h + "\n" for h in hyps))
        (tmp / "references.txt").write_text("\n".join("".join(r + "\n" for r in g) for g in refs))
        if task in MAX_REFERENCES:
            (tmp / "hypotheses_raw.txt").write_text("".join(one_line(h) + "\n" for h in hypotheses))
        (tmp / "contexts.txt").write_text("".join(one_line(g["context"]) + "\n" for g in groups))
        if all("category" in g for g in groups):
            (tmp / "categories.txt").write_text("".join(g["category"] + "\n" for g in groups))
        (tmp / "generation.json").write_text(
            json.dumps({**meta, "references_dropped": dropped}, indent=2) + "\n")
    return Path(directory)


def score_outputs(task: str, hypotheses: Sequence[str], references: Sequence[Sequence[str]],
                  categories: Sequence[str] | None = None, java: str | None = None,
                  meteor: Any = None) -> dict[str, MetricResult]:
    """Score texts prepared by :func:`scored_texts` with the task's official metrics.

    Returns subsets ``all`` (+ WebNLG ``seen`` / ``unseen`` when categories are given).
    ``meteor``: a running ``Meteor15`` to reuse across calls (E2E), saving ~15 s of jar loading.
    """
    if task == "e2e":
        from .metrics.e2e import score_e2e
        return {"all": score_e2e(hypotheses, references, java=java, meteor=meteor)}
    if task == "webnlg":
        from .metrics.webnlg import score_webnlg
        return score_webnlg(hypotheses, references, categories=categories, java=java)
    if task == "dart":
        from .metrics.webnlg import score_dart
        return {"all": score_dart(hypotheses, references, java=java)}
    raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")
