"""A Llama-architecture decoder with its own tokenizer through the whole NLG path.

The backbone is a tiny ``LlamaForCausalLM`` (random init, saved as a local model directory) with
a byte-level BPE trained here on the bundled E2E sample (``<s>`` / ``</s>``, ids unlike GPT-2's).
``launch/train_nlg.py`` trains it on 2 CPU ranks under ZeRO-3 (built in partitions) and decodes
test inputs at the end with the tokenizer's own stop tokens. Oracles: the adaptation exported to
PEFT and loaded by the real ``peft`` library over the plain backbone, and the dense merged export
loaded by plain ``from_pretrained``, give the logits of the AdaMix model rebuilt from the run's
adaptation (merged experts); the GPT-2 BPE stop set is the LoRA NLG code's (50256, 628).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from adamix_ds.data import load_tokenizer
from adamix_ds.evaluation.beam import tokenizer_stop_tokens
from tests.dist_env import child_env
from tests.multirank.conftest import REPO_ROOT, launcher_cmd, log_rows, run_ok, train_args

pytestmark = [pytest.mark.multirank, pytest.mark.slow]

STEPS = 4


def build_llama_dir(folder: Path) -> None:
    """A tiny Llama and its own BPE tokenizer, as a Hugging Face model directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    text = (REPO_ROOT / "assets" / "e2e_sample" / "train.txt").read_text().replace("||", " ")
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(text.splitlines(), trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>")
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=128,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    model.save_pretrained(folder)


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama_nlg")
    build_llama_dir(root / "llama")
    preset = {
        "backbone": str(root / "llama"), "init": "pretrained", "task": "e2e", "data_dir": None,
        "max_seq_len": 48, "max_train_examples": 32,
        "adamix": {"method": "lora", "num_experts": 4, "rank": 4, "alpha": 32,
                   "lora_dropout": 0.0, "targets": ["q", "v"], "share": "up",
                   "consistency_weight": 10.0, "expert_init": "independent"},
        "train": {"max_steps": STEPS, "lr": 5e-2, "warmup_steps": 0, "consistency": "paired",
                  "seed": 3, "log_every": 1, "route_check_every": 1, "sample_after": 2},
    }
    (root / "preset.yaml").write_text(yaml.safe_dump(preset))
    config = json.loads((REPO_ROOT / "ds_configs" / "cpu_zero3.json").read_text())
    config["train_micro_batch_size_per_gpu"] = 2
    (root / "zero3.json").write_text(json.dumps(config))
    out = root / "run"
    run = run_ok("tiny Llama, 2 ranks ZeRO-3",
                 launcher_cmd(2, train_args(root / "zero3.json", root / "preset.yaml", out)),
                 out, child_env())
    return root, run


def test_llama_trains_on_two_ranks_under_zero3_and_decodes(llama_run):
    root, run = llama_run
    rows = log_rows(run.out_dir)
    assert [int(r["step"]) for r in rows] == list(range(1, STEPS + 1))
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    # rank 0 decoded test inputs with the merged model at the end (the tokenizer's stop tokens)
    assert "Merged AdaMix model on test inputs:" in run.output, run.describe()
    assert run.output.count("  output: ") == 2, run.describe()


def test_llama_exports_load_in_peft_and_from_pretrained_with_equal_logits(llama_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from adamix_ds.cli import main
    from adamix_ds.evaluation.pipeline import load_decoding_model

    root, run = llama_run
    adaptation, backbone = run.out_dir / "adaptation", root / "llama"
    reference = load_decoding_model(adaptation, merge=False).model.eval()  # merged mode, unfolded
    ids = torch.tensor([[1, 45, 87, 120, 9, 300, 17]])
    with torch.no_grad():
        expected = reference(input_ids=ids).logits
        plain = AutoModelForCausalLM.from_pretrained(backbone)(input_ids=ids).logits
    assert (expected - plain).abs().max() > 1e-3, "training must have changed the model"

    common = [str(adaptation), "--backbone", str(backbone)]
    assert main(["export", *common, "--out", str(tmp_path / "peft"),
                 "--merged", str(tmp_path / "dense")]) == 0
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(backbone),
                                           str(tmp_path / "peft")).eval()
    dense = AutoModelForCausalLM.from_pretrained(tmp_path / "dense").eval()
    with torch.no_grad():
        torch.testing.assert_close(peft_model(input_ids=ids).logits, expected, atol=2e-5, rtol=0)
        torch.testing.assert_close(dense(input_ids=ids).logits, expected, atol=2e-5, rtol=0)
    # the dense export carries the backbone's own tokenizer
    assert load_tokenizer(tmp_path / "dense").eos_token == "</s>"


def test_stop_tokens_come_from_the_tokenizer(llama_run):
    root, _ = llama_run
    assert tokenizer_stop_tokens(load_tokenizer()) == (50256, 628)  # GPT-2: eos and "\n\n"
    llama = load_tokenizer(root / "llama")
    stops = tokenizer_stop_tokens(llama)
    assert stops[0] == llama.eos_token_id == llama.convert_tokens_to_ids("</s>")
    assert 50256 not in stops


def test_generate_script_decodes_the_llama_run_with_its_tokenizers_stop_tokens(llama_run,
                                                                              tmp_path):
    import generate_nlg  # launch/generate_nlg.py

    root, run = llama_run
    out = tmp_path / "gen"
    assert generate_nlg.main(["--checkpoint", str(run.out_dir / "adaptation"), "--limit", "2",
                              "--num_beams", "2", "--max_new_tokens", "6",
                              "--output_dir", str(out)]) == 0
    assert len((out / "hypotheses.txt").read_text().splitlines()) == 2
    record = json.loads((out / "generation.json").read_text())
    llama = load_tokenizer(root / "llama")
    assert record["beam"]["stop_token_ids"] == list(tokenizer_stop_tokens(llama))


def test_right_padded_training_batches_keep_llama_positions(llama_run):
    """Training pads on the right (collate_nlg), so rotary positions of the real tokens are
    0..n-1 as in an unpadded forward: each row's logits equal its own unpadded forward's."""
    from transformers import AutoModelForCausalLM

    from adamix_ds.data import collate_nlg, load_nlg_dataset

    root, _ = llama_run
    tokenizer = load_tokenizer(root / "llama")
    model = AutoModelForCausalLM.from_pretrained(root / "llama").eval()
    dataset = load_nlg_dataset("e2e", "train", None, tokenizer, 128)
    examples = [dataset[i] for i in (0, 3, 5)]
    batch = collate_nlg(examples, tokenizer.eos_token_id)
    lengths = batch["attention_mask"].sum(1).tolist()
    assert len(set(lengths)) > 1, "the rows must differ in length for padding to matter"
    with torch.no_grad():
        padded = model(input_ids=batch["input_ids"],
                       attention_mask=batch["attention_mask"]).logits
        for row, n in enumerate(lengths):
            alone = model(input_ids=batch["input_ids"][row:row + 1, :n]).logits[0]
            torch.testing.assert_close(padded[row, :n], alone, atol=1e-5, rtol=0)
