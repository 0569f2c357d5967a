"""Decoding a trained toy checkpoint: the inference policies, merged == folded weights, the files
``launch/generate_nlg.py`` writes, PEFT exports, deduplication and bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import generate_nlg  # launch/generate_nlg.py
from adamix_ds.backbones import load_backbone
from adamix_ds.checkpoint import WEIGHTS_FILE, export_peft, read_adaptation_config, save_adaptation
from adamix_ds.data import bundled_asset, load_tokenizer
from adamix_ds.evaluation import generate as generate_mod
from adamix_ds.evaluation.beam import BeamSettings
from adamix_ds.evaluation.generate import decode_contexts
from adamix_ds.evaluation.pipeline import load_decoding_model, write_generation
from adamix_ds.merging import merge_experts
from adamix_ds.routing import _EVAL_STREAM
from tests.no_deepspeed import run_without_deepspeed

REPO = Path(__file__).resolve().parents[1]

# Small beams so the CPU tests stay quick; the rules are the paper's (tests/test_beam_search.py).
FAST = BeamSettings(num_beams=3, max_new_tokens=10)
FAST_FLAGS = ["--num_beams", "3", "--max_new_tokens", "10"]


def e2e_test_groups() -> list[tuple[str, list[str]]]:
    """(MR, references) of the bundled E2E test file, read independently of the library: lines
    ``MR||ref``, consecutive lines with the same MR form one group (file order)."""
    groups: list[tuple[str, list[str]]] = []
    for line in (bundled_asset("e2e_sample") / "test.txt").read_text().splitlines():
        if not line.strip():
            continue
        mr, ref = line.strip().split("||")
        if groups and groups[-1][0] == mr:
            groups[-1][1].append(ref)
        else:
            groups.append((mr, [ref]))
    return groups


@pytest.fixture(scope="module")
def contexts() -> list[str]:
    return [mr for mr, _ in e2e_test_groups()[:3]]


def test_policies_give_different_outputs(toy_checkpoint: Path, contexts: list[str]) -> None:
    loaded = load_decoding_model(toy_checkpoint, merge=False)
    router = loaded.router
    # Random draws whose route leaves expert 0 on every routing key: a draw that differs from the
    # fixed policy on one key of four may, on a toy model, decode the same words.
    far = [draw for draw in range(64)
           if all(router.pair(key, draw, 0, stream=_EVAL_STREAM)[0] != 0
                  for key in range(router.num_keys))][:2]
    outputs = {}
    for name, kwargs in {"merged": {"inference": "merged"}, "fixed": {"inference": "fixed"},
                         "random_a": {"inference": "random", "route_draw": far[0]},
                         "random_b": {"inference": "random", "route_draw": far[1]},
                         "ensemble": {"inference": "ensemble", "ensemble_passes": 3}}.items():
        outputs[name] = tuple(decode_contexts(loaded.model, loaded.tokenizer, contexts, FAST,
                                              router=loaded.router, **kwargs))
    assert len(set(outputs.values())) == len(outputs), outputs
    # A policy is a pure function of the checkpoint and the draw: decoding again repeats it.
    again = decode_contexts(loaded.model, loaded.tokenizer, contexts, FAST, router=loaded.router,
                            inference="random", route_draw=far[1])
    assert tuple(again) == outputs["random_b"]


def _folded_by_hand(checkpoint: Path) -> torch.nn.Module:
    """The backbone with W_qv += (alpha / r) * mean_j(A_j) @ mean_k(B_k) written in by hand from
    the saved tensors (Eq. 3 on LoRA), no AdaMix code on the model."""
    cfg, meta = read_adaptation_config(checkpoint)
    preset = meta["preset"]
    model = load_backbone(preset["backbone"], init="random", seed=preset["train"]["seed"],
                          **preset["backbone_config"])
    state = load_file(str(checkpoint / WEIGHTS_FILE))
    d = model.config.n_embd
    for layer, block in enumerate(model.transformer.h):
        weight = block.attn.c_attn.weight            # Conv1D: (d_in, 3d), columns q | k | v
        assert weight.shape == (d, 3 * d)
        for part, cols in (("q", slice(0, d)), ("v", slice(2 * d, 3 * d))):
            prefix = f"transformer.h.{layer}.attn.c_attn.experts.{part}"
            a = state[f"{prefix}.lora_a"].double().mean(0)   # (d, r)
            b = state[f"{prefix}.lora_b"].double().mean(0)   # (r, d)
            with torch.no_grad():
                weight[:, cols] += (cfg.alpha / cfg.rank * a @ b).float()
    return model.eval()


def test_merged_decoding_equals_folded_weights(toy_checkpoint: Path, contexts: list[str]) -> None:
    tokenizer = load_tokenizer()
    by_hand = decode_contexts(_folded_by_hand(toy_checkpoint), tokenizer, contexts, FAST)
    served = load_decoding_model(toy_checkpoint, merge=True)        # merged + folded LoRA
    mixture = load_decoding_model(toy_checkpoint, merge=False)      # Eq. 3 on the fly
    assert decode_contexts(served.model, tokenizer, contexts, FAST) == by_hand
    assert decode_contexts(mixture.model, tokenizer, contexts, FAST, router=mixture.router,
                           inference="merged") == by_hand
    fixed = decode_contexts(mixture.model, tokenizer, contexts, FAST, router=mixture.router,
                            inference="fixed")
    assert fixed != by_hand  # the merge really changes what is decoded


def test_duplicates_decoded_once_in_input_order(toy_checkpoint: Path, contexts: list[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = load_decoding_model(toy_checkpoint)
    seen: list[int] = []
    real = generate_mod.beam_search

    def counting(model, prompts, *args, **kwargs):
        seen.append(len(prompts))
        return real(model, prompts, *args, **kwargs)

    monkeypatch.setattr(generate_mod, "beam_search", counting)
    lines = [contexts[1], contexts[0], contexts[1], contexts[2], contexts[0]]
    out = decode_contexts(loaded.model, loaded.tokenizer, lines, FAST, batch_size=2)
    assert sum(seen) == 3
    single = {c: decode_contexts(loaded.model, loaded.tokenizer, [c], FAST)[0] for c in contexts}
    assert out == [single[c] for c in lines]


def test_generate_script_writes_official_files(toy_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "gen"
    assert generate_nlg.main(["--checkpoint", str(toy_checkpoint), "--limit", "4",
                              "--output_dir", str(out), *FAST_FLAGS]) == 0
    groups = e2e_test_groups()[:4]
    hyps = (out / "hypotheses.txt").read_text().splitlines()
    assert len(hyps) == 4 and all("\n" not in h for h in hyps)
    assert (out / "contexts.txt").read_text().splitlines() == [mr for mr, _ in groups]
    blocks = (out / "references.txt").read_text().split("\n\n")
    assert [b.strip().splitlines() for b in blocks] == [refs for _, refs in groups]
    loaded = load_decoding_model(toy_checkpoint)
    assert hyps == decode_contexts(loaded.model, loaded.tokenizer, [mr for mr, _ in groups], FAST)


def test_decoding_never_imports_deepspeed(toy_checkpoint: Path, tmp_path: Path) -> None:
    """The serving path (load, route as an ensemble, beam search, write) runs without the
    training stack: deepspeed is not in the script's ``sys.modules`` at its exit."""
    proc = run_without_deepspeed(REPO / "launch/generate_nlg.py",
                                 ["--checkpoint", str(toy_checkpoint), "--limit", "2",
                                  *FAST_FLAGS, "--inference", "ensemble", "--ensemble_passes",
                                  "2", "--output_dir", str(tmp_path / "gen")],
                                 cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                                 timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len((tmp_path / "gen" / "hypotheses.txt").read_text().splitlines()) == 2


def test_peft_export_decodes_like_the_merged_checkpoint(toy_checkpoint: Path, contexts: list[str],
                                                         tmp_path: Path) -> None:
    mixture = load_decoding_model(toy_checkpoint, merge=False)
    export_peft(mixture.model, tmp_path / "peft", mixture.config)
    preset = mixture.preset
    # A PEFT export carries no preset: the random-init backbone must be rebuilt the same way, so
    # build it here and hand it over as a saved local directory.
    base = load_backbone(preset["backbone"], init="random", seed=preset["train"]["seed"],
                         **preset["backbone_config"])
    base.save_pretrained(tmp_path / "base")
    peft = load_decoding_model(tmp_path / "peft", backbone=str(tmp_path / "base"))
    assert peft.router is None
    served = load_decoding_model(toy_checkpoint)
    assert decode_contexts(peft.model, peft.tokenizer, contexts, FAST) == \
        decode_contexts(served.model, served.tokenizer, contexts, FAST)
    with pytest.raises(ValueError, match="policy 'random' routes among the experts"):
        decode_contexts(peft.model, peft.tokenizer, contexts, FAST, router=peft.router,
                        inference="random")


@pytest.mark.parametrize("flags,message", [
    (["--inference", "fixed"], "--inference fixed routes among the experts"),
    (["--inference", "merged", "--ensemble_passes", "3"], "needs --inference ensemble"),
    (["--task", "webnlg"], "no bundled webnlg data: pass data_dir"),
])
def test_bad_requests_exit_2_with_the_flag_named(toy_checkpoint: Path, tmp_path: Path,
                                                 flags: list[str], message: str,
                                                 capsys: pytest.CaptureFixture) -> None:
    checkpoint = toy_checkpoint
    if "fixed" in flags:  # a merged checkpoint has no experts left to route
        mixture = load_decoding_model(toy_checkpoint, merge=False)
        merge_experts(mixture.model, "average")
        checkpoint = save_adaptation(mixture.model, tmp_path / "merged", mixture.config,
                                     extra={"preset": mixture.preset})
    code = generate_nlg.main(["--checkpoint", str(checkpoint), "--limit", "1", *FAST_FLAGS,
                              "--output_dir", str(tmp_path / "out"), *flags])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.multirank
def test_two_ranks_write_what_one_rank_writes(toy_checkpoint: Path, tmp_path: Path) -> None:
    common = [str(REPO / "launch/generate_nlg.py"), "--checkpoint", str(toy_checkpoint),
              "--limit", "5", "--batch_size", "2", *FAST_FLAGS]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, *common, "--output_dir", str(tmp_path / "one")], env=env,
                   check=True)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                    "--master_port", "29533", *common, "--output_dir", str(tmp_path / "two")],
                   env=env, check=True)
    for name in ("hypotheses.txt", "references.txt", "contexts.txt"):
        assert (tmp_path / "two" / name).read_text() == (tmp_path / "one" / name).read_text()


def test_webnlg_files_are_written_as_the_paper_scores_them(tmp_path: Path) -> None:
    """WebNLG / DART files: lower-cased, split at every non-word character (LoRA gpt2_decode.py
    --tokenize --lower), at most 6 references with the cut counted; E2E files stay as decoded."""
    groups = [{"context": "A : b : C", "category": "Airport",
               "references": [f"Ref {i}: Aarhus' runway is 2702.0 m." for i in range(8)]},
              {"context": "D : e : F", "category": "Artist", "references": ["It's  OK\nhere."]}]
    hyps = ["Aarhus Airport's runway (2702.0)!", "Line one\nline two"]
    write_generation(tmp_path / "webnlg", "webnlg", groups, hyps, {"note": "x"})
    out = tmp_path / "webnlg"
    assert (out / "hypotheses.txt").read_text().splitlines() == [
        "aarhus airport ' s runway ( 2702 . 0 ) !", "line one line two"]
    blocks = [b.splitlines() for b in (out / "references.txt").read_text().split("\n\n")]
    assert blocks[0] == [f"ref {i} : aarhus ' runway is 2702 . 0 m ." for i in range(6)]
    assert blocks[1] == ["it ' s ok here ."]
    assert (out / "hypotheses_raw.txt").read_text().splitlines() == [
        "Aarhus Airport's runway (2702.0)!", "Line one line two"]
    assert (out / "categories.txt").read_text().splitlines() == ["Airport", "Artist"]
    assert json.loads((out / "generation.json").read_text()) == {
        "note": "x",
        "references_dropped": 2,
    }
    write_generation(tmp_path / "e2e", "e2e", groups, hyps, {})
    assert (tmp_path / "e2e" / "hypotheses.txt").read_text().splitlines() == [
        "Aarhus Airport's runway (2702.0)!", "Line one line two"]
    assert not (tmp_path / "e2e" / "hypotheses_raw.txt").exists()
