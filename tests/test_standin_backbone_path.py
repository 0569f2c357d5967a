"""A decoder pre-trained by launch/pretrain_lm.py, given as ``--backbone DIR --init pretrained``,
through every NLG entry point: training (DeepSpeed, one CPU process), ``adamix-ds merge`` and
``export``, ``generate_nlg.py`` and ``eval_nlg.py``.

Oracles: the directory's own safetensors (the weights each tool serves must be those, not a
random init of the same config); the same training run with ``--init random`` (its first loss
must differ: otherwise the trainer ignored the weights); real ``peft`` loading the PEFT export on
``from_pretrained(DIR)`` (its logits must equal our merged model's).
"""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import eval_nlg  # launch/eval_nlg.py
import generate_nlg  # launch/generate_nlg.py
from adamix_ds import cli
from adamix_ds.data import bundled_asset, load_tokenizer
from adamix_ds.data.lm_corpus import collect_texts, pack_blocks
from adamix_ds.evaluation.pipeline import load_decoding_model
from adamix_ds.pretraining import PretrainConfig, pretrain
from tests.dist_env import single_process_env

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

DECODE = ["--num_beams", "2", "--max_new_tokens", "8", "--limit", "3"]
PRESET = """backbone: {backbone}
init: pretrained
task: e2e
data_dir: null
max_seq_len: 48
max_train_examples: 16
adamix:
  method: lora
  num_experts: 2
  rank: 4
  alpha: 16
  lora_dropout: 0.0
  targets: [q, v]
  share: up
  consistency_weight: 1.0
  routing_seed: 0
train:
  max_steps: 3
  lr: 1.0e-2
  warmup_steps: 1
  seed: 5
  log_every: 1
  sample_after: 0
"""


def _train(preset: Path, out: Path, *flags: str) -> list[dict[str, str]]:
    """launch/train_nlg.py as one torch.distributed process (no launcher); the train log rows."""
    cmd = [sys.executable, str(REPO / "launch" / "train_nlg.py"), "--ds_config",
           str(REPO / "ds_configs" / "cpu_zero0.json"), "--preset", str(preset),
           "--output_dir", str(out), "--no_resume", *flags]
    done = subprocess.run(cmd, cwd=REPO, env=single_process_env(), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    with open(out / "train_log.csv") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer GPT-2 pre-trained for 20 steps on the bundled GLUE sentences."""
    tok = load_tokenizer()
    train = collect_texts(bundled_asset(""), ["glue"], "train")
    held = collect_texts(bundled_asset(""), ["glue"], "heldout")
    out = tmp_path_factory.mktemp("standin") / "gpt2-2x32"
    cfg = PretrainConfig(n_layer=2, n_embd=32, n_head=2, n_positions=128, block_size=32,
                         batch_size=4, max_steps=20, lr=2e-2, warmup_steps=2, eval_blocks=4)
    pretrain(cfg, pack_blocks(train.texts, tok, 32, order_seed=0),
             pack_blocks(held.texts, tok, 32, order_seed=None, max_blocks=4), tok, out,
             {"digest": train.digest()}, log=lambda m: None)
    return out


@pytest.fixture(scope="module")
def trained(standin: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("standin_runs")
    preset = root / "preset.yaml"
    preset.write_text(PRESET.format(backbone=json.dumps(str(standin))))
    pretrained = _train(preset, root / "pretrained")
    random = _train(preset, root / "random", "--init", "random")
    return {"adaptation": root / "pretrained" / "adaptation", "rows": pretrained,
            "random_rows": random, "root": root}


def test_training_starts_from_the_directory_weights(trained: dict) -> None:
    rows, random_rows = trained["rows"], trained["random_rows"]
    assert [int(float(r["step"])) for r in rows] == [1, 2, 3]
    first, first_random = float(rows[0]["task_loss"]), float(random_rows[0]["task_loss"])
    # Same data, routes and (zero) LoRA updates at step 1: only the backbone weights differ.
    assert first < first_random - 0.5, (first, first_random)
    meta = json.loads((trained["adaptation"] / "adamix_config.json").read_text())
    assert meta["preset"]["init"] == "pretrained"


def test_decoding_serves_the_directory_weights(trained: dict, standin: Path) -> None:
    loaded = load_decoding_model(trained["adaptation"], merge=False)
    state = loaded.model.state_dict()
    weights = load_file(str(standin / "model.safetensors"))
    assert len(weights) >= 4 * 2 + 4                 # every block's tensors, not a stub file
    for name, tensor in weights.items():
        # the LoRA layer keeps the projection it wraps as `base`, unmerged here
        key = name if name in state else name.replace(".c_attn.", ".c_attn.base.")
        assert torch.equal(state[key], tensor), name


def test_merge_and_peft_export_on_the_directory(trained: dict, standin: Path,
                                                tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    merged_dir, export_dir = tmp_path / "merged", tmp_path / "peft"
    for command, out in (("merge", merged_dir), ("export", export_dir)):
        assert cli.main([command, str(trained["adaptation"]), "--backbone", str(standin),
                         "--init", "pretrained", "--out", str(out)]) == 0
    ours = load_decoding_model(trained["adaptation"], merge=True).model.eval()
    from_merged = load_decoding_model(merged_dir, backbone=str(standin), init="pretrained",
                                      merge=True).model.eval()
    base = AutoModelForCausalLM.from_pretrained(str(standin))
    theirs = peft.PeftModel.from_pretrained(base, str(export_dir)).eval()
    ids = load_tokenizer(standin)("name : The Eagle | food : French", return_tensors="pt")
    with torch.no_grad():
        expected = ours(**ids).logits
        assert torch.allclose(from_merged(**ids).logits, expected, atol=1e-5)
        assert torch.allclose(theirs(**ids).logits, expected, atol=1e-5)


def test_generate_and_eval_on_the_directory(trained: dict, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "gen"
    assert generate_nlg.main(["--checkpoint", str(trained["adaptation"]), "--output_dir",
                              str(out), *DECODE]) == 0
    assert len((out / "hypotheses.txt").read_text().splitlines()) == 3
    capsys.readouterr()
    code = eval_nlg.main(["--checkpoint", str(trained["adaptation"]), "--output_dir",
                          str(tmp_path / "eval"), "--show", "2", *DECODE])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "[merged] first 2 decodes:" in printed and printed.count("  ref   : ") == 2
    scores = json.loads((tmp_path / "eval" / "scores.json").read_text())
    assert set(scores["policies"]["merged"]["subsets"]["all"]["scores"]) == \
        {"BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr"}
