"""Tests for adamix_ds.data (E2E / WebNLG / DART readers, encoding, collation, datasets).

Oracles: records hand-copied from the real files; token sequences assembled by hand in the test
from separately tokenized pieces; the reference code's (pre-shifted target, mask) construction
rewritten here from its description; a tiny random GPT-2's own ``labels`` loss. Everything runs
offline on the bundled samples (``assets/``, ``tests/data/``); one check reads the full E2E
test set when ``$ADAMIX_DS_DATA`` gives it.
"""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
import torch

from adamix_ds.data import (
    IGNORE_INDEX,
    SEEN_WEBNLG_CATEGORIES,
    build_example,
    bundled_asset,
    collate_nlg,
    encode_record,
    encode_records,
    group_references,
    linearise_triples,
    load_nlg_dataset,
    load_nlg_records,
    load_tokenizer,
    read_dart,
    read_e2e,
    read_webnlg,
    resolve_split_file,
)

DATA = Path(__file__).parent / "data"
WEBNLG_SAMPLE = DATA / "webnlg" / "train.json"
DART_SAMPLE = DATA / "dart" / "dart-v1.1.1-full-dev.json"
EOS = 50256


@pytest.fixture(scope="module")
def tok():
    """The bundled GPT-2 tokenizer (offline)."""
    return load_tokenizer()


def e2e_sample(split: str) -> Path:
    return bundled_asset(f"e2e_sample/{split}.txt")


# ----------------------------------------------------------------------------- assets

def test_data_root_from_environment(tmp_path, monkeypatch):
    """No data_dir: $ADAMIX_DS_DATA/<task> first, then the bundled sample; a flag always wins."""
    (tmp_path / "e2e").mkdir()
    mine = tmp_path / "e2e" / "test.txt"
    mine.write_text("name : X||X is here .\n")
    bundled = bundled_asset("e2e_sample/test.txt")
    assert resolve_split_file("e2e", "test") == bundled  # conftest unsets the variable
    monkeypatch.setenv("ADAMIX_DS_DATA", str(tmp_path))
    assert resolve_split_file("e2e", "test") == mine
    assert resolve_split_file("e2e", "test", bundled.parent) == bundled
    with pytest.raises(FileNotFoundError, match=r"ADAMIX_DS_DATA=.*no webnlg/ folder"):
        resolve_split_file("webnlg", "train")
    monkeypatch.delenv("ADAMIX_DS_DATA")
    with pytest.raises(FileNotFoundError, match=r"pass data_dir .* or set \$ADAMIX_DS_DATA"):
        resolve_split_file("webnlg", "train")


def test_bundled_asset_paths():
    assert (bundled_asset("gpt2_tokenizer") / "vocab.json").is_file()
    assert (bundled_asset("gpt2_tokenizer") / "merges.txt").is_file()
    with pytest.raises(FileNotFoundError, match="no_such_asset"):
        bundled_asset("no_such_asset")
    with pytest.raises(ValueError):
        bundled_asset("../pyproject.toml")


def test_bundled_tokenizer_is_gpt2(tok):
    assert len(tok) == 50257
    assert tok.eos_token_id == EOS and tok.convert_ids_to_tokens(EOS) == "<|endoftext|>"
    # Ids from the GPT-2 vocabulary: "name", " :", " Blue", " Spice".
    assert tok("name : Blue Spice", add_special_tokens=False)["input_ids"] == [
        3672,
        1058,
        4518,
        43537,
    ]
    assert tok.decode(tok("Café Adriatic £ 30")["input_ids"]) == "Café Adriatic £ 30"


# ----------------------------------------------------------------------------- E2E reader

def test_read_e2e_counts_and_first_records():
    train, valid, test = (read_e2e(e2e_sample(s)) for s in ("train", "valid", "test"))
    assert (len(train), len(valid), len(test)) == (400, 44, 43)
    # Line 1 of the real train.txt; the reference's trailing space is stripped (line.strip()).
    assert train[0] == {
        "context": "name : The Vaults | Type : pub | price : more than £ 30 | "
        "customer rating : 5 out of 5 | near : Café Adriatic",
        "completion": "The Vaults pub near Café Adriatic has a 5 star rating . "
        "Prices start at £ 30 .",
    }
    assert test[0] == {
        "context": "name : Blue Spice | Type : coffee shop | area : city centre",
        "completion": "A coffee shop in the city centre area called Blue Spice .",
    }
    assert valid[0]["context"] == "name : Alimentum | area : city centre | family friendly : no"
    assert all(not r["completion"].endswith(" ") for r in train + valid + test)


def test_group_references_e2e_test_sample():
    groups = group_references(read_e2e(e2e_sample("test")))
    assert [len(g["references"]) for g in groups] == [2, 2, 3, 7, 1, 2, 2, 3, 7, 1, 7, 6]
    assert groups[0] == {
        "context": "name : Blue Spice | Type : coffee shop | area : city centre",
        "references": ["A coffee shop in the city centre area called Blue Spice .",
                       "Blue Spice is a coffee shop in city centre ."],
    }
    assert groups[1]["context"] == "name : Blue Spice | Type : coffee shop | area : riverside"
    assert len(group_references(read_e2e(e2e_sample("valid")))) == 6


def test_group_references_full_e2e_test_set(full_data):
    test_file = full_data / "e2e" / "test.txt"
    if not test_file.is_file():
        pytest.skip(f"full E2E test set not present at {test_file}")
    records = read_e2e(test_file)
    groups = group_references(records)
    assert (len(records), len(groups)) == (4693, 630)
    assert sum(len(g["references"]) for g in groups) == 4693


@pytest.mark.parametrize("bad_line, message", [
    ("name : X | area : riverside, a reference with no separator", "exactly one '||'"),
    ("name : X||first||second", "exactly one '||'"),
    ("name : X||   ", "empty reference"),
    ("||A reference without MR .", "empty MR"),
])
def test_read_e2e_malformed_line_names_file_and_line(tmp_path, bad_line, message):
    path = tmp_path / "bad.txt"
    # Line 1 good, line 2 blank (skipped, but counted), line 3 bad.
    path.write_text("name : A||A is a place . \n\n" + bad_line + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"bad\.txt:3: .*{message}"):
        read_e2e(path)


def test_read_e2e_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_e2e(tmp_path / "nope.txt")


# ----------------------------------------------------------------------------- WebNLG reader

def test_read_webnlg_records():
    records = read_webnlg(WEBNLG_SAMPLE)
    assert len(records) == 15  # 16 lexicalisations, one "toFix" dropped as in the reference code
    assert records[0] == {
        "context": 'Aarhus_Airport : cityServed : "Aarhus, Denmark"',
        "completion": "The Aarhus is the airport of Aarhus, Denmark.",
        "category": "Airport", "seen": True, "entry": 0,
    }
    three = [r for r in records if r["entry"] == 3]
    assert [r["context"] for r in three] == [
        "Aarhus_Airport : location : Tirstrup | Tirstrup : country : Denmark | "
        "Denmark : language : Danish_language"] * 3
    assert three[0]["completion"] == (
        "Aarhus Airport is located in Tirstrup, Denmark; where the language is Danish.")
    completions = [r["completion"] for r in records]
    assert "The Alma Mater of Alan Bean is UT Austin, B.S. 1955." not in completions  # toFix
    assert "Alan Bean graduated in 1955 from UT Austin with a B.S." in completions


def test_read_webnlg_categories_and_underscores():
    astronaut = read_webnlg(WEBNLG_SAMPLE, categories=["Astronaut"])
    assert len(astronaut) == 4 and {r["category"] for r in astronaut} == {"Astronaut"}
    assert read_webnlg(WEBNLG_SAMPLE, categories=["Politician"]) == []
    spaced = read_webnlg(WEBNLG_SAMPLE, replace_underscores=True)
    assert spaced[0]["context"] == 'Aarhus Airport : cityServed : "Aarhus, Denmark"'
    assert len(SEEN_WEBNLG_CATEGORIES) == 10 and "Politician" not in SEEN_WEBNLG_CATEGORIES


def test_group_references_keeps_shared_metadata():
    groups = group_references(read_webnlg(WEBNLG_SAMPLE))
    assert len(groups) == 5
    assert [len(g["references"]) for g in groups] == [2, 3, 3, 3, 4]
    assert groups[4]["category"] == "Astronaut" and groups[4]["seen"] is True
    mixed = group_references([
        {"context": "c", "completion": "a", "source": "e2e", "entry": 0},
        {"context": "c", "completion": "b", "source": "webnlg", "entry": 0},
    ])
    assert mixed == [{"context": "c", "references": ["a", "b"], "entry": 0}]


def test_read_webnlg_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        read_webnlg(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"entries": [', encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken\.json: invalid JSON"):
        read_webnlg(broken)
    data = json.loads(WEBNLG_SAMPLE.read_text(encoding="utf-8"))
    del data["entries"][1]["2"]["lexicalisations"]
    partial_file = tmp_path / "partial.json"
    partial_file.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match=r"partial\.json: entries\[1\]: missing field"):
        read_webnlg(partial_file)


# ----------------------------------------------------------------------------- DART reader

def test_read_dart_records():
    records = read_dart(DART_SAMPLE)
    assert len(records) == 12
    assert records[0] == {
        "context": "Mars Hill College : joined : 1973 | "
                   "Mars Hill College : location : Mars Hill, North Carolina",
        "completion": "A school from Mars Hill, North Carolina, joined in 1973.",
        "source": "WikiSQL_decl_sents", "entry": 0,
    }
    # Relations lower-cased (DART converter), underscores kept.
    assert records[2]["context"] == ("New York : swimsuit : 8.713 | New York : evening_gown : 8.400"
                                     " | New York : average : 8.525")
    assert records[2]["completion"] == "New York\t it 8.713 New York\t 8.525"
    groups = group_references(records)
    assert [len(g["references"]) for g in groups] == [1, 1, 1, 3, 6]
    assert groups[4]["source"] == "e2e"


def test_read_dart_errors(tmp_path):
    data = json.loads(DART_SAMPLE.read_text(encoding="utf-8"))
    data[2]["tripleset"][0] = ["New York", "SWIMSUIT"]
    bad = tmp_path / "bad_dart.json"
    bad.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad_dart\.json: entry 2"):
        read_dart(bad)
    with pytest.raises(FileNotFoundError, match="absent.json"):
        read_dart(tmp_path / "absent.json")


def test_linearise_triples():
    triples = [("A_b", "REL_x", "c_d"), ("e", "f", "g")]
    assert linearise_triples(triples) == "A_b : REL_x : c_d | e : f : g"
    assert linearise_triples(triples, lowercase_relation=True, replace_underscores=True) == \
        "A b : rel x : c d | e : f : g"


# ----------------------------------------------------------------------------- encoding

def _pieces(tok, record) -> tuple[list[int], list[int]]:
    ctx = tok(record["context"], add_special_tokens=False)["input_ids"]
    comp = tok(" " + record["completion"], add_special_tokens=False)["input_ids"]
    return ctx, comp


def test_encode_matches_hand_built_sequence(tok):
    record = read_e2e(e2e_sample("test"))[0]
    ctx, comp = _pieces(tok, record)
    assert tok.decode(comp) == " " + record["completion"]
    ex = encode_record(record, tok, max_seq_len=512)
    assert ex["input_ids"] == ctx + [EOS] + comp + [EOS]
    assert ex["labels"] == [IGNORE_INDEX] * (len(ctx) + 1) + comp + [EOS]
    assert ex["context_len"] == len(ctx) + 1
    # The -100 span is exactly context + separator; the final eos is a target.
    ignored = [i for i, y in enumerate(ex["labels"]) if y == IGNORE_INDEX]
    assert ignored == list(range(len(ctx) + 1))
    assert ex["labels"][-1] == EOS and ex["input_ids"][len(ctx)] == EOS


def test_labels_select_the_reference_codes_targets(tok):
    """HF-convention labels pick the same (position, token) pairs as data_utils.FT_Dataset."""
    for record in read_webnlg(WEBNLG_SAMPLE)[:4] + read_dart(DART_SAMPLE)[:4]:
        ex = encode_record(record, tok, max_seq_len=512)
        ids, cond_len = ex["input_ids"], ex["context_len"]
        # Reference: target[i] = ids[i + 1]; mask = [0] * (len(cond) - 1) + [1] * len(completion).
        ref_target = ids[1:]
        ref_mask = [0] * (cond_len - 1) + [1] * (len(ids) - cond_len)
        ref_pairs = [(i, t) for i, (t, m) in enumerate(zip(ref_target, ref_mask, strict=True)) if m]
        # HF: logits at i predict labels[i + 1].
        hf_pairs = [(i - 1, y) for i, y in enumerate(ex["labels"]) if y != IGNORE_INDEX]
        assert hf_pairs == ref_pairs


def test_hf_model_loss_uses_completion_tokens_only(tok):
    """A tiny random GPT-2's ``labels`` loss equals CE over exactly the completion tokens."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=256)).eval()
    examples = encode_records(read_e2e(e2e_sample("valid"))[:3], tok, max_seq_len=256)
    batch = collate_nlg(examples, pad_id=EOS)
    with torch.no_grad():
        out = model(**batch)
    logits = out.logits.double()
    terms = []
    for b, ex in enumerate(examples):
        for pos in range(ex["context_len"], len(ex["input_ids"])):  # completion + final eos
            terms.append(-torch.log_softmax(logits[b, pos - 1], -1)[ex["input_ids"][pos]])
    assert torch.allclose(out.loss.double(), torch.stack(terms).mean(), atol=1e-5)


def test_truncation_rules():
    ctx, comp = list(range(1, 11)), [101, 102, 103, 104, 105]
    fits = build_example(ctx, comp, 0, max_seq_len=17)
    assert fits["input_ids"] == ctx + [0] + comp + [0] and fits["context_len"] == 11
    # Context cut on the left, the whole completion + final eos kept.
    cut = build_example(ctx, comp, 0, max_seq_len=10)
    assert cut["input_ids"] == [8, 9, 10, 0, 101, 102, 103, 104, 105, 0]
    assert cut["labels"] == [IGNORE_INDEX] * 4 + [101, 102, 103, 104, 105, 0]
    assert cut["context_len"] == 4
    # Completion alone too long: prompt = separator only, completion cut on the right, eos kept.
    tight = build_example(ctx, comp, 0, max_seq_len=5)
    assert tight["input_ids"] == [0, 101, 102, 103, 0]
    assert tight["labels"] == [IGNORE_INDEX, 101, 102, 103, 0]
    assert build_example(ctx, comp, 0, max_seq_len=2)["input_ids"] == [0, 0]
    with pytest.raises(ValueError, match="max_seq_len"):
        build_example(ctx, comp, 0, max_seq_len=1)


def test_left_truncation_on_real_text(tok):
    record = read_e2e(e2e_sample("train"))[0]
    ctx, comp = _pieces(tok, record)
    keep = 4  # context tokens left after the cut
    ex = encode_record(record, tok, max_seq_len=keep + 1 + len(comp) + 1)
    assert ex["input_ids"] == ctx[-keep:] + [EOS] + comp + [EOS]
    assert ex["context_len"] == keep + 1
    assert tok.decode(ex["input_ids"][:keep]) == tok.decode(ctx[-keep:])  # end of the MR kept


# ----------------------------------------------------------------------------- collation

def test_collate_pads_right():
    batch = [
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "context_len": 1},
        {"input_ids": torch.tensor([1, 2, 3, 4, 9]), "labels": [-100, -100, 3, 4, 9]},
    ]
    out = collate_nlg(batch, pad_id=EOS)
    assert set(out) == {"input_ids", "attention_mask", "labels"}
    assert all(t.dtype == torch.long and t.shape == (2, 5) for t in out.values())
    assert out["input_ids"].tolist() == [[5, 6, 7, EOS, EOS], [1, 2, 3, 4, 9]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert out["labels"].tolist() == [[-100, 6, 7, -100, -100], [-100, -100, 3, 4, 9]]
    again = collate_nlg(batch, pad_id=EOS)
    assert all(torch.equal(out[k], again[k]) for k in out)
    assert collate_nlg(batch, pad_id=0, pad_to_multiple_of=8)["input_ids"].shape == (2, 8)
    with pytest.raises(ValueError, match="example 0"):
        collate_nlg([{"input_ids": [1, 2], "labels": [1]}], pad_id=0)
    with pytest.raises(ValueError, match="empty"):
        collate_nlg([], pad_id=0)


# ----------------------------------------------------------------------------- datasets

def test_load_nlg_dataset_bundled_e2e(tok):
    ds = load_nlg_dataset("e2e", "test", tokenizer=tok, max_seq_len=512)
    assert len(ds) == 43
    assert set(ds.column_names) == {"input_ids", "labels", "context_len"}
    first = encode_record(read_e2e(e2e_sample("test"))[0], tok, 512)
    assert ds[0] == first
    loader = torch.utils.data.DataLoader(
        ds, batch_size=4, collate_fn=partial(collate_nlg, pad_id=EOS)
    )
    batch = next(iter(loader))
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["input_ids"].shape[0] == 4
    short = load_nlg_dataset("e2e", "dev", max_seq_len=16, max_examples=5)  # default tokenizer
    assert len(short) == 5 and max(len(x) for x in short["input_ids"]) <= 16


def test_load_nlg_dataset_webnlg_and_dart_fixtures(tok):
    web = load_nlg_dataset("webnlg", "train", DATA / "webnlg", tok, 128)
    assert len(web) == 15
    assert web[0] == encode_record(read_webnlg(WEBNLG_SAMPLE)[0], tok, 128)
    astronaut = load_nlg_dataset("webnlg", "train", DATA, tok, 128, categories=["Astronaut"])
    assert len(astronaut) == 4
    dart = load_nlg_dataset("dart", "valid", DATA, tok, 128)  # found under DATA/dart/
    assert len(dart) == 12
    assert all(y[-1] == EOS for y in dart["labels"])


def test_split_resolution_errors(tmp_path):
    assert resolve_split_file("e2e", "validation") == bundled_asset("e2e_sample/valid.txt")
    assert resolve_split_file("dart", "dev", DATA) == DART_SAMPLE
    with pytest.raises(ValueError, match="unknown NLG task"):
        resolve_split_file("xsum", "train")
    with pytest.raises(ValueError, match="unknown split"):
        resolve_split_file("e2e", "extra")
    with pytest.raises(FileNotFoundError, match="pass data_dir"):
        resolve_split_file("webnlg", "train")
    with pytest.raises(FileNotFoundError, match="test.json"):
        load_nlg_records("webnlg", "test", tmp_path)
