"""The NLU task family for the shared training loop: GLUE and LM-BFF few-shot.

* GLUE (``preset.task`` a GLUE name): a sequence-classification (or, for STS-B, regression)
  head on the backbone; AdaMix adapters / LoRA inside; the head is trained with the experts.
* LM-BFF (``preset.lmbff_seed`` set, ``task`` SST-2 / subj / mpqa): the backbone's masked-LM
  head scores the task's label words at the prompt's mask; nothing new is trained but the experts.

After a finished run, rank 0 evaluates the dev split (LM-BFF: the test split, as the paper's
few-shot table) under each inference policy and writes ``eval_<split>.json``.
"""
from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..backbones import load_backbone, load_config
from ..checkpoint import load_adaptation, read_adaptation_config
from ..config import INFERENCE_MODES
from ..data import (
    LMBFF_TASKS,
    NluExample,
    collate_nlu,
    encode_glue,
    format_prompt,
    get_glue_task,
    get_lmbff_task,
    read_glue,
    read_lmbff,
)
from ..evaluation.glue_metrics import glue_metrics, main_metric
from ..evaluation.report import atomic_write_text
from ..inject import inject_adamix
from ..losses import AdaMixLossOutput
from ..nlu import label_word_ids, nlu_forward, predict
from ..routing import Router
from .preset import Preset
from .trainer import RunResult, TrainTask, run_training

# Parameters trained with the experts: the classification head (BERT: pooler + classifier;
# RoBERTa: classifier.dense + classifier.out_proj). The LM head of a prompt run stays frozen.
HEAD_PATTERNS = {"bert": (r"(?:.*\.)?pooler\.dense\..*", r"classifier\..*"),
                 "roberta": (r"classifier\..*",), "xlm-roberta": (r"classifier\..*",)}
SUBSET_SEED = 0  # max_train_examples draws the same subset for every run (methods, seeds)


@dataclass
class NluSetup:
    """A run's NLU data and scoring, shared by training and evaluation."""
    task: str                          # GLUE name or LM-BFF task name
    prompt: bool                       # LM-BFF: masked-LM head on label words
    num_labels: int                    # 1 = regression
    eval_split: str
    tokenizer: Any
    word_ids: list[int] | None = None

    @property
    def mask_token_id(self) -> int | None:
        return self.tokenizer.mask_token_id if self.prompt else None

    def read(self, preset: Preset, split: str) -> list[NluExample]:
        if self.prompt:
            examples = read_lmbff(self.task, preset.lmbff_k, preset.lmbff_seed, split,
                                  preset.data_dir)
            mask = self.tokenizer.mask_token
            return [replace(e, text_a=format_prompt(e.text_a, self.task, mask)) for e in examples]
        return read_glue(self.task, split, preset.data_dir)

    def encode(self, examples: Sequence[NluExample], max_seq_len: int) -> list[dict[str, Any]]:
        return encode_glue(examples, self.tokenizer, max_seq_len)

    def collate(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return collate_nlu(features, self.tokenizer.pad_token_id)

    def metrics(self, predictions: Sequence[float], labels: Sequence[float]) -> dict[str, float]:
        return glue_metrics(self.task, predictions, labels)


def nlu_setup(preset: Preset) -> NluSetup:
    from transformers import AutoTokenizer  # deferred: heavy

    tokenizer = AutoTokenizer.from_pretrained(preset.tokenizer or preset.backbone)
    if preset.lmbff_seed is not None:
        task = get_lmbff_task(preset.task).name
        if tokenizer.mask_token is None:
            raise ValueError(f"{preset.backbone}: prompt-based few-shot needs a masked-LM "
                             "tokenizer with a mask token")
        words = LMBFF_TASKS[task].label_words
        return NluSetup(task, True, len(words), "test", tokenizer,
                        label_word_ids(tokenizer, [words[i] for i in sorted(words)]))
    glue = get_glue_task(preset.task)
    split = "dev_matched" if glue.name == "MNLI" else "dev"
    return NluSetup(glue.name, False, glue.num_labels, split, tokenizer)


def with_head_trainable(preset: Preset) -> Preset:
    """The preset with the backbone's classification head added to ``extra_trainable`` (GLUE
    runs), so the head trains and is saved in the adaptation checkpoint."""
    if preset.lmbff_seed is not None:
        return preset
    model_type = load_config(preset.backbone, **preset.backbone_config).model_type
    if model_type not in HEAD_PATTERNS:
        raise ValueError(f"{preset.backbone}: no classification-head pattern for model type "
                         f"{model_type!r} (known: {sorted(HEAD_PATTERNS)}); list the head's "
                         f"parameters in adamix.extra_trainable")
    extra = tuple(dict.fromkeys(preset.adamix.extra_trainable + HEAD_PATTERNS[model_type]))
    return replace(preset, adamix=replace(preset.adamix, extra_trainable=extra))


def build_nlu_backbone(preset: Preset, setup: NluSetup) -> nn.Module:
    if setup.prompt:
        return load_backbone(preset.backbone, init=preset.init, task="masked_lm",
                             seed=preset.train.seed, **preset.backbone_config)
    return load_backbone(preset.backbone, init=preset.init, task="sequence_classification",
                         seed=preset.train.seed, num_labels=setup.num_labels,
                         **preset.backbone_config)


def training_examples(preset: Preset, setup: NluSetup) -> list[NluExample]:
    """The train split, or a fixed seeded subset of ``max_train_examples`` (same for every run)."""
    examples = setup.read(preset, "train")
    n = preset.max_train_examples
    if n is not None and n < len(examples):
        keep = sorted(random.Random(SUBSET_SEED).sample(range(len(examples)), n))
        examples = [examples[i] for i in keep]
    return examples


def evaluate_policies(model: nn.Module, router: Router | None, setup: NluSetup,
                      features: Sequence[dict[str, Any]], policies: Sequence[str],
                      ensemble_passes: int, batch_size: int = 64) -> dict[str, dict[str, float]]:
    """Metrics of each inference policy on encoded examples (length-sorted batches)."""
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    batches = [setup.collate([features[i] for i in order[s:s + batch_size]])
               for s in range(0, len(order), batch_size)]
    labels = [features[i]["labels"] for i in order]
    model.eval()
    results = {}
    for policy in policies:
        preds = predict(model, router, batches, policy, ensemble_passes,
                        mask_token_id=setup.mask_token_id, word_ids=setup.word_ids)
        results[policy] = setup.metrics(preds, labels)
    return results


def write_eval(output_dir: Path, split: str, task: str, results: dict[str, dict[str, float]],
               extra: dict[str, Any]) -> Path:
    """``eval_<split>.json``, written atomically."""
    payload = {"task": task, "split": split, "main_metric": main_metric(task),
               "policies": results, **extra}
    return atomic_write_text(
        output_dir / f"eval_{split}.json", json.dumps(payload, indent=2) + "\n"
    )


def score_run(loaded: NluModel, policies: Sequence[str], output_dir: Path
              ) -> tuple[dict[str, dict[str, float]], Path]:
    """Score a rebuilt run on its eval split under ``policies``; write ``eval_<split>.json``."""
    setup, preset = loaded.setup, loaded.preset
    features = setup.encode(setup.read(preset, setup.eval_split), preset.max_seq_len)
    results = evaluate_policies(loaded.model, loaded.router, setup, features, policies,
                                preset.adamix.ensemble_passes)
    path = write_eval(output_dir, setup.eval_split, setup.task, results,
                      {"examples": len(features)})
    return results, path


def nlu_task(preset: Preset) -> TrainTask:
    """The TrainTask of an NLU preset (see module docstring)."""
    train, cfg = preset.train, preset.adamix
    setup = nlu_setup(preset)
    features = setup.encode(training_examples(preset, setup), preset.max_seq_len)
    model = build_nlu_backbone(preset, setup)

    def forward(engine: Any, batch: dict[str, torch.Tensor], router: Router,
                scale: torch.Tensor) -> AdaMixLossOutput:
        return nlu_forward(engine, batch, router, cfg, train.consistency, train.label_smoothing,
                           loss_scale=scale, mask_token_id=setup.mask_token_id,
                           word_ids=setup.word_ids)

    def finish(output_dir: Path) -> None:
        results, path = score_run(load_nlu_model(output_dir / "adaptation"), INFERENCE_MODES,
                                  output_dir)
        merged = results["merged"]
        print(f"{setup.task} {setup.eval_split} (merged experts): "
              + ", ".join(f"{k} {v:.4f}" for k, v in merged.items()) + f"; all policies in {path}")

    return TrainTask(model, features, setup.collate, lambda batch: int(batch["labels"].numel()),
                     forward, finish)


def train_nlu(preset: Preset, ds_config_path: str | Path, output_dir: str | Path,
              resume: bool = True) -> RunResult:
    """Run (or resume) NLU training; every rank calls this."""
    return run_training(preset, ds_config_path, output_dir, nlu_task, resume)


@dataclass
class NluModel:
    model: nn.Module
    router: Router
    setup: NluSetup
    preset: Preset


def load_nlu_model(adaptation_dir: str | Path, device: torch.device | None = None) -> NluModel:
    """Rebuild a run's model from its adaptation export (the mixture: every policy works)."""
    path = Path(adaptation_dir)
    cfg, meta = read_adaptation_config(path)
    if not meta.get("preset"):
        raise ValueError(f"{path}: the adaptation stores no preset; cannot rebuild the backbone")
    preset = Preset.from_dict(meta["preset"], source=f"{path} (stored preset)")
    setup = nlu_setup(preset)
    model = build_nlu_backbone(preset, setup)
    router = inject_adamix(model, cfg).router
    load_adaptation(model, path, cfg)
    model.to(device).eval()
    return NluModel(model, router, setup, preset)

