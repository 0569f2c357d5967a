"""The stand-in decoder's pre-training: corpus rules, loss, resume, and the saved directory.

Oracles: hand-written corpus files (which texts must be kept or dropped); an uninterrupted run
as the reference for a run interrupted and resumed (bit-equal logits); the plain cross-entropy
of the reloaded model against the report's held-out loss; the initial loss of a random model
(about ln(vocabulary)) against the trained one.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from adamix_ds.backbones import load_backbone
from adamix_ds.data import bundled_asset, load_tokenizer
from adamix_ds.data.encoding import encode_records
from adamix_ds.data.lm_corpus import collect_texts, pack_blocks
from adamix_ds.pretraining import PretrainConfig, batch_indices, learning_rate, pretrain

TINY = dict(n_layer=2, n_embd=32, n_head=2, n_positions=64, block_size=32, batch_size=4,
            max_steps=20, lr=2e-2, warmup_steps=2, eval_blocks=8)


@pytest.fixture(scope="module")
def blocks():
    tok = load_tokenizer()
    train = collect_texts(bundled_asset(""), ["glue"], "train")
    held = collect_texts(bundled_asset(""), ["glue"], "heldout")
    return (tok, pack_blocks(train.texts, tok, 32, order_seed=0),
            pack_blocks(held.texts, tok, 32, order_seed=None, max_blocks=8), train.digest())


def _write(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def test_corpus_drops_e2e_copies_in_dart_and_duplicates(tmp_path: Path) -> None:
    _write(tmp_path / "dart" / "dart-v1.1.1-full-dev.json", [
        {"tripleset": [["A", "r", "B"]], "annotations": [
            {"source": "WikiSQL_decl_sents", "text": "A is  related to B."},
            {"source": "e2e", "text": "The Eagle is a pub."}]},
        {"tripleset": [["C", "r", "D"]], "annotations": [
            {"source": "webnlg", "text": "A is related to B."}]},   # a duplicate after spacing
    ])
    _write(tmp_path / "webnlg" / "train.json", {"entries": [{"1": {
        "category": "City", "modifiedtripleset": [{"subject": "X", "property": "p", "object": "Y"}],
        "lexicalisations": [{"comment": "good", "lex": "X has Y."},
                            {"comment": "toFix", "lex": "X haz Y."}]}}]})
    corpus = collect_texts(tmp_path, ["webnlg", "dart"], "train")
    assert corpus.texts == ["X has Y.", "A is related to B."]
    assert corpus.counts == {"webnlg": 1, "dart": 1}
    assert corpus.dropped == {"dart_e2e_annotations": 1, "duplicates": 1}
    with pytest.raises(ValueError, match="unknown corpus source"):
        collect_texts(tmp_path, ["e2e"], "train")
    with pytest.raises(FileNotFoundError, match="GLUE"):
        collect_texts(tmp_path, ["glue"], "train")


def test_pair_sources_keep_triples_before_text_and_drop_e2e(tmp_path: Path) -> None:
    _write(tmp_path / "dart" / "dart-v1.1.1-full-dev.json", [
        {"tripleset": [["A", "R", "B"]], "annotations": [
            {"source": "WikiSQL_decl_sents", "text": "A is related to B."},
            {"source": "e2e", "text": "The Eagle is a pub."}]},
        {"tripleset": [["The Eagle", "eatType", "pub"]], "annotations": [
            {"source": "e2e", "text": "The Eagle is a pub near the river."}]},
    ])
    _write(tmp_path / "webnlg" / "train.json", {"entries": [{"1": {
        "category": "City", "modifiedtripleset": [{"subject": "X", "property": "p", "object": "Y"}],
        "lexicalisations": [{"comment": "good", "lex": "X has Y."}]}}]})
    corpus = collect_texts(tmp_path, ["webnlg_pairs", "dart_pairs"], "train")
    # DART relations are lower-cased, as its reference converter does
    assert corpus.texts == ["X : p : Y <|endoftext|> X has Y.",
                            "A : r : B <|endoftext|> A is related to B."]
    assert corpus.dropped == {"dart_e2e_annotations": 2}
    assert not any("Eagle" in t for t in corpus.texts)


def test_pair_documents_pack_as_the_fine_tuning_encoding() -> None:
    tok = load_tokenizer()
    records = [{"context": "name : Alimentum | food : Thai",
                "completion": "Alimentum serves Thai."},
               {"context": "X : p : Y", "completion": "X has Y."}]
    docs = [f"{r['context']} <|endoftext|> {r['completion']}" for r in records]
    stream = [i for ex in encode_records(records, tok, 512) for i in ex["input_ids"]]
    out = pack_blocks(docs, tok, 4, order_seed=None)
    assert out.flatten().tolist() == stream[: len(stream) // 4 * 4]


def test_pack_blocks_appends_eos_and_cuts_full_blocks() -> None:
    tok = load_tokenizer()
    texts = ["hello world", "a b c d"]
    ids = [tok(t)["input_ids"] for t in texts]
    stream = ids[0] + [tok.eos_token_id] + ids[1] + [tok.eos_token_id]
    out = pack_blocks(texts, tok, 3, order_seed=None)
    assert out.tolist() == [stream[i:i + 3] for i in range(0, len(stream) // 3 * 3, 3)]


def test_schedule_and_batch_order() -> None:
    cfg = PretrainConfig(**{**TINY, "max_steps": 100, "warmup_steps": 10})
    assert learning_rate(cfg, 0) == pytest.approx(cfg.lr / 10)
    assert learning_rate(cfg, 9) == pytest.approx(cfg.lr)
    assert learning_rate(cfg, 100) == pytest.approx(cfg.lr * cfg.min_lr_ratio)
    # 10 blocks, batch 4: steps 0-1 and half of 2 read epoch 0's permutation once each
    seen = torch.cat([batch_indices(10, 4, 0, s) for s in range(5)]).tolist()
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))


class _Stop(Exception):
    pass


def test_loss_falls_resume_is_exact_and_directory_reloads(tmp_path: Path, blocks) -> None:
    tok, train, held, digest = blocks
    cfg = PretrainConfig(**TINY)
    info = {"digest": digest}
    whole = pretrain(cfg, train, held, tok, tmp_path / "whole", info, save_every=5,
                     log_every=2, log=lambda m: None)
    first, last = whole["history"][0]["loss"], whole["history"][-1]["loss"]
    assert first > math.log(50257) - 1.0          # a random model starts near ln(V)
    assert last < first - 1.5, (first, last)

    def interrupt(msg: str) -> None:
        if "step 12/" in msg:
            raise _Stop
    with pytest.raises(_Stop):
        pretrain(cfg, train, held, tok, tmp_path / "resumed", info, save_every=5, log_every=2,
                 log=interrupt)
    assert (tmp_path / "resumed" / "train_state.pt").is_file()
    assert not (tmp_path / "resumed" / "config.json").exists()   # never half-exported
    resumed = pretrain(cfg, train, held, tok, tmp_path / "resumed", info, save_every=5,
                       log_every=2, log=lambda m: None)
    assert not (tmp_path / "resumed" / "train_state.pt").exists()

    a = load_backbone(str(tmp_path / "whole"), init="pretrained").eval()
    b = load_backbone(str(tmp_path / "resumed"), init="pretrained").eval()
    ids = held[:2]
    with torch.no_grad():
        logits = a(input_ids=ids).logits
        assert torch.equal(logits, b(input_ids=ids).logits)
        ce = torch.nn.functional.cross_entropy(a(input_ids=held).logits[:, :-1].reshape(
            -1, logits.shape[-1]), held[:, 1:].reshape(-1)).item()
    assert ce == pytest.approx(whole["heldout_loss"], rel=1e-5)
    assert resumed["heldout_loss"] == pytest.approx(whole["heldout_loss"], rel=1e-6)
    assert load_tokenizer(tmp_path / "whole")("The Eagle")["input_ids"] == \
        tok("The Eagle")["input_ids"]

    again = pretrain(cfg, train, held, tok, tmp_path / "whole", info, log=lambda m: None)
    assert again["heldout_loss"] == whole["heldout_loss"]        # finished: nothing retrained
    with pytest.raises(ValueError, match="other settings"):
        pretrain(PretrainConfig(**{**TINY, "lr": 1e-3}), train, held, tok, tmp_path / "whole",
                 info, log=lambda m: None)
