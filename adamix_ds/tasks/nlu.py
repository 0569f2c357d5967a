"""The NLU task family: GLUE classification / regression and LM-BFF prompt-based few-shot.

* GLUE (``preset.task`` a GLUE name): a sequence-classification (or, for STS-B, regression)
  head on the backbone; AdaMix adapters / LoRA inside; the head is trained with the experts.
* LM-BFF (``preset.lmbff_seed`` set, ``task`` SST-2 / subj / mpqa): the backbone's masked-LM
  head scores the task's label words at the prompt's mask; nothing new is trained but the experts.

The routed passes are the NLG ones (``tasks.base.routed_passes``); what changes is the output
the loss sees:

* classification head: class logits ``(B, C)``; task loss = label-smoothed CE of pass 1, and the
  consistency term is the same stop-gradient symmetric KL as for tokens (``consistency_kl``),
  one "position" per example;
* regression head (STS-B): prediction ``(B,)``; task loss = MSE of pass 1, consistency =
  ``0.5 * ((y1 - sg(y2))^2 + (y2 - sg(y1))^2)`` (``stopgrad``) or ``(y1 - y2)^2``
  (``symmetric``), the squared-distance analogue of the KL between the passes;
* masked-LM prompt (LM-BFF): the logits at the ``[MASK]`` position, restricted to the label
  words' ids, are the class logits ``(B, C)``; then as for classification.

After a finished run, rank 0 evaluates the dev split (LM-BFF: the test split, as the paper's
few-shot table) under each inference policy and writes ``eval_<split>.json``. Pure torch.
"""
from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..backbones import load_backbone, load_config
from ..checkpoint import load_adaptation, read_adaptation_config
from ..config import INFERENCE_MODES, AdaMixConfig
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
from ..inference import inference_policy, member_mean, member_mean_probs, repeat_members
from ..inject import inject_adamix
from ..losses import AdaMixLossOutput, consistency_kl, label_smoothed_cross_entropy
from ..preset import Preset
from ..routing import Router
from .base import BEST_ADAPTATION, TrainTask, check_schedule, routed_passes

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def label_word_ids(tokenizer: Any, words: Sequence[str]) -> list[int]:
    """Vocabulary id of each label word as it follows a space (RoBERTa's BPE marks that space;
    WordPiece ignores it). A word that is not one token is an error: its logit would be
    ambiguous."""
    ids = []
    for word in words:
        pieces = tokenizer.tokenize(" " + word)
        if len(pieces) != 1:
            raise ValueError(f"label word {word!r} is {len(pieces)} tokens {pieces} for this "
                             f"tokenizer; choose a single-token word")
        ids.append(tokenizer.convert_tokens_to_ids(pieces[0]))
    return ids


def output_scores(logits: torch.Tensor, input_ids: torch.Tensor, mask_token_id: int | None,
                  word_ids: Sequence[int] | None) -> torch.Tensor:
    """The tensor the loss and the metrics see.

    logits: (B, C) from a classification head, (B, 1) from a regression head, or (B, T, V) from
        a masked-LM head (then ``mask_token_id`` and ``word_ids`` are needed).
    Returns (B, C) class logits, or (B,) predictions for regression.
    """
    if word_ids is None:
        return logits.squeeze(-1) if logits.shape[-1] == 1 else logits
    at_mask = input_ids == mask_token_id                                  # (B, T)
    per_row = at_mask.sum(-1)
    if not bool((per_row == 1).all()):
        bad = int((per_row != 1).nonzero()[0])
        raise ValueError(f"prompt row {bad} holds {int(per_row[bad])} mask tokens, expected 1 "
                         f"(was the prompt truncated? raise max_seq_len)")
    mask_logits = logits[at_mask]                                         # (B, V)
    return mask_logits[:, list(word_ids)]                                 # (B, C)


def nlu_loss(scores_1: torch.Tensor, scores_2: torch.Tensor | None, labels: torch.Tensor,
             weight: float, smoothing: float = 0.0, mode: str = "stopgrad") -> AdaMixLossOutput:
    """Task loss of pass 1 + weight * consistency between the passes (module docstring).

    scores_*: (B, C) class logits or (B,) regression predictions; labels (B,) int64 / float.
    """
    if scores_1.dim() == 2:
        # the two terms one at a time (not adamix_loss), so that each stays differentiable
        task = label_smoothed_cross_entropy(scores_1, labels, smoothing=smoothing)
        if scores_2 is None:
            return AdaMixLossOutput(task, task, task.new_zeros(()))
        consistency = consistency_kl(scores_1, scores_2, mode=mode)
        return AdaMixLossOutput(task + weight * consistency, task, consistency)
    task = nn.functional.mse_loss(scores_1.float(), labels.float())
    if scores_2 is None:
        zero = task.new_zeros(())
        return AdaMixLossOutput(task, task, zero)
    y1, y2 = scores_1.float(), scores_2.float()
    if mode == "stopgrad":
        consistency = 0.5 * ((y1 - y2.detach()).pow(2) + (y2 - y1.detach()).pow(2)).mean()
    else:
        consistency = (y1 - y2).pow(2).mean()
    return AdaMixLossOutput(task + weight * consistency, task, consistency)


def nlu_forward(model: Callable[..., Any], batch: dict[str, torch.Tensor], router: Router,
                cfg: AdaMixConfig, consistency: str = "paired", label_smoothing: float = 0.0,
                loss_scale: float | torch.Tensor = 1.0, mask_token_id: int | None = None,
                word_ids: Sequence[int] | None = None) -> AdaMixLossOutput:
    """Forward the routed passes of an NLU batch and return its AdaMix loss.

    batch: ``input_ids``, ``attention_mask`` (B, T), optional ``token_type_ids``, ``labels`` (B,).
    loss_scale: multiplies every term (this rank's share of the global example mean).
    """
    check_schedule(consistency)
    inputs = {k: v for k, v in batch.items() if k in MODEL_INPUTS}

    def scores(kw: dict[str, torch.Tensor]) -> torch.Tensor:
        return output_scores(model(**kw).logits, kw["input_ids"], mask_token_id, word_ids)

    s1, s2 = routed_passes(scores, inputs, router, consistency)
    weight = cfg.consistency_weight if s2 is not None else 0.0
    out = nlu_loss(s1, s2, batch["labels"], weight, label_smoothing, cfg.consistency_mode)
    return out.scaled(loss_scale)


@torch.no_grad()
def predict(model: nn.Module, router: Router | None, batches: Iterable[dict[str, torch.Tensor]],
            policy: str = "merged", ensemble_passes: int = 4, route_draw: int = 0,
            mask_token_id: int | None = None, word_ids: Sequence[int] | None = None,
            expert: int = 0) -> list[float]:
    """Predictions of an eval-mode model under one inference policy.

    Classification: the argmax class (``ensemble``: of the mean of the members' softmax);
    regression: the prediction (``ensemble``: the members' mean). ``random`` serves one randomly
    drawn route for the whole call (``route_draw`` picks the draw; K draws = K random models);
    ``fixed`` serves expert ``expert`` alone.
    """
    if model.training:
        raise ValueError("predict needs model.eval()")
    out: list[float] = []
    device = next(model.parameters()).device
    with inference_policy(model, router, policy, ensemble_passes if policy == "ensemble" else 1,
                          route_draw, expert) as members:
        for batch in batches:
            # segment t of the repeated batch is routed by ensemble member t
            inputs = {k: repeat_members(v.to(device), members) for k, v in batch.items()
                      if k in MODEL_INPUTS}
            s = output_scores(model(**inputs).logits, inputs["input_ids"], mask_token_id,
                              word_ids)
            if s.dim() == 2:
                out += member_mean_probs(s, members).argmax(-1).tolist()
            else:
                out += member_mean(s.float(), members).tolist()
    return out


# Parameters trained with the experts: the classification head (BERT: pooler + classifier,
# or the classifier alone with `train_pooler: false`; RoBERTa: classifier.dense +
# classifier.out_proj). The LM head of a prompt run stays frozen.
HEAD_PATTERNS = {"bert": (r"(?:.*\.)?pooler\.dense\..*", r"classifier\..*"),
                 "roberta": (r"classifier\..*",), "xlm-roberta": (r"classifier\..*",)}
POOLER_PATTERN = HEAD_PATTERNS["bert"][0]
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
    def selection_split(self) -> str:
        """The split scored during training to pick the best checkpoint: the dev split, never
        the split the run reports (LM-BFF reports test and selects on its k-shot dev split)."""
        return "dev" if self.prompt else self.eval_split

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
    runs), so the head trains and is saved in the adaptation checkpoint; BERT's pooler only with
    ``train_pooler`` (else it stays as pretrained, as in the AdaMix authors' BERT code)."""
    if preset.lmbff_seed is not None:
        return preset
    model_type = load_config(preset.backbone, **preset.backbone_config).model_type
    if model_type not in HEAD_PATTERNS:
        raise ValueError(f"{preset.backbone}: no classification-head pattern for model type "
                         f"{model_type!r} (known: {sorted(HEAD_PATTERNS)}); list the head's "
                         f"parameters in adamix.extra_trainable")
    head = tuple(p for p in HEAD_PATTERNS[model_type]
                 if preset.train_pooler or p != POOLER_PATTERN)
    extra = tuple(dict.fromkeys(preset.adamix.extra_trainable + head))
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


def score_run(loaded: NluModel, policies: Sequence[str], output_dir: Path,
              best_dir: Path | None = None, last: dict[str, dict[str, float]] | None = None
              ) -> tuple[dict[str, dict[str, float]], Path]:
    """Score a rebuilt run on its eval split under ``policies``; write ``eval_<split>.json``.

    ``best_dir``: ``loaded`` is the best dev evaluation's export (its ``adaptation_config.json``
    names the step and epoch); the file then reports it as the selected result, with ``last``
    (the last step's policies) beside it.
    """
    setup, preset = loaded.setup, loaded.preset
    features = setup.encode(setup.read(preset, setup.eval_split), preset.max_seq_len)
    results = evaluate_policies(loaded.model, loaded.router, setup, features, policies,
                                preset.adamix.ensemble_passes)
    extra: dict[str, Any] = {"examples": len(features), "selected": "last"}
    if best_dir is not None:
        _, meta = read_adaptation_config(best_dir)
        extra.update(selected="best", best={k: meta.get(k) for k in ("step", "epoch")},
                     last={"policies": last})
    path = write_eval(output_dir, setup.eval_split, setup.task, results, extra)
    return results, path


def dev_evaluator(preset: Preset, setup: NluSetup
                  ) -> Callable[[nn.Module, Router], dict[str, float]]:
    """(eval-mode module, router) -> metrics of the selection split under the merged policy."""
    dev = setup.encode(setup.read(preset, setup.selection_split), preset.max_seq_len)

    def evaluate(module: nn.Module, router: Router) -> dict[str, float]:
        return evaluate_policies(module, router, setup, dev, ["merged"],
                                 preset.adamix.ensemble_passes)["merged"]

    return evaluate


def nlu_task(preset: Preset) -> TrainTask:
    """The TrainTask of an NLU preset (see module docstring). With ``train.eval_every`` it
    scores the eval split under the merged policy during training (``TrainTask.evaluate``)."""
    train, cfg = preset.train, preset.adamix
    setup = nlu_setup(preset)
    features = setup.encode(training_examples(preset, setup), preset.max_seq_len)
    model = build_nlu_backbone(preset, setup)

    def forward(engine: Any, batch: dict[str, torch.Tensor], router: Router,
                scale: torch.Tensor) -> AdaMixLossOutput:
        return nlu_forward(engine, batch, router, cfg, train.consistency, train.label_smoothing,
                           loss_scale=scale, mask_token_id=setup.mask_token_id,
                           word_ids=setup.word_ids)

    evaluate = dev_evaluator(preset, setup) if train.eval_every is not None else None

    def finish(output_dir: Path) -> None:
        last, path = score_run(load_nlu_model(output_dir / "adaptation"), INFERENCE_MODES,
                               output_dir)
        print(f"{setup.task} {setup.eval_split} (merged experts, last step): "
              + ", ".join(f"{k} {v:.4f}" for k, v in last["merged"].items())
              + f"; all policies in {path}")
        best_dir = output_dir / BEST_ADAPTATION
        if train.select_best and best_dir.is_dir():
            best, _ = score_run(load_nlu_model(best_dir), INFERENCE_MODES, output_dir,
                                best_dir=best_dir, last=last)
            print(f"{setup.task} {setup.eval_split} (merged experts, best dev evaluation): "
                  + ", ".join(f"{k} {v:.4f}" for k, v in best["merged"].items()))

    return TrainTask(model, features, setup.collate, lambda batch: int(batch["labels"].numel()),
                     forward, finish, evaluate=evaluate,
                     selection_metric=main_metric(setup.task) if evaluate else None)


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

