"""``adamix-ds score``: tables, JSON, exit status 1 for a missing metric and 2 for bad files."""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from adamix_ds.cli import main
from adamix_ds.evaluation.metrics.e2e import score_e2e
from tests.test_metrics_webnlg import _corpus

NO_JAVA = "/nonexistent/bin/java"


def _write(tmp_path: Path, n: int = 10, seed: int = 7):
    """A hypothesis file, a grouped reference file, the same references in GenerationEval's
    reference0..5 files (padded with the first, as the LoRA decoder writes them), categories."""
    hyps, refs = _corpus(random.Random(seed), n)
    hyp = tmp_path / "hyp.txt"
    hyp.write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    grouped = tmp_path / "refs.txt"
    grouped.write_text("\n".join("".join(r + "\n" for r in g) for g in refs), encoding="utf-8")
    multi = tmp_path / "references"
    multi.mkdir()
    for k in range(6):
        (multi / f"reference{k}").write_text(
            "".join((g[k] if k < len(g) else g[0]) + "\n" for g in refs), encoding="utf-8")
    cats = tmp_path / "categories.txt"
    categories = ["Airport", "Artist"] * (n // 2) + ["Food"] * (n % 2)
    cats.write_text("\n".join(categories) + "\n", encoding="utf-8")
    return hyps, refs, hyp, grouped, multi, cats


def _sacrebleu(hyps, refs) -> float:
    sacrebleu = pytest.importorskip("sacrebleu")
    streams = [[g[k] if k < len(g) else None for g in refs] for k in range(max(map(len, refs)))]
    return sacrebleu.corpus_bleu(hyps, streams, tokenize="13a", smooth_method="none").score


def test_dart_table_and_missing_java(tmp_path, capsys):
    hyps, refs, hyp, grouped, _, _ = _write(tmp_path)
    assert main(["score", "dart", "--refs", str(grouped), "--hyp", str(hyp),
                 "--java", NO_JAVA]) == 1
    out, err = capsys.readouterr()
    header, row = out.strip().splitlines()
    assert header.split() == ["BLEU", "TER"]
    assert row.split()[0] == "all" and row.split()[1] == f"{_sacrebleu(hyps, refs):.2f}"
    assert "METEOR not computed" in err and "Java not found" in err and NO_JAVA in err


def test_webnlg_json_with_categories_and_both_reference_formats(tmp_path, capsys):
    hyps, refs, hyp, grouped, multi, cats = _write(tmp_path)
    outputs = []
    for ref_arg in (grouped, multi, multi / "reference"):
        assert main(["score", "webnlg", "--refs", str(ref_arg), "--hyp", str(hyp),
                     "--categories", str(cats), "--java", NO_JAVA, "--json"]) == 1
        outputs.append(json.loads(capsys.readouterr().out))
    assert outputs[0] == outputs[1] == outputs[2]  # padding with the first reference is neutral
    out = outputs[0]
    assert list(out) == ["all", "seen", "unseen"]
    assert out["all"]["scores"]["BLEU"] == pytest.approx(_sacrebleu(hyps, refs), abs=1e-4)
    seen = [i for i in range(len(hyps)) if i % 2 == 0]
    assert out["seen"]["scores"]["BLEU"] == pytest.approx(
        _sacrebleu([hyps[i] for i in seen], [refs[i] for i in seen]), abs=1e-4)
    assert set(out["unseen"]["errors"]) == {"METEOR"}


def test_e2e_scores_block(tmp_path, capsys):
    hyps, refs, hyp, grouped, _, _ = _write(tmp_path)
    assert main(["score", "e2e", "--refs", str(grouped), "--hyp", str(hyp),
                 "--java", NO_JAVA]) == 1
    out, err = capsys.readouterr()
    expected = score_e2e(hyps, refs, java=NO_JAVA)
    assert out.splitlines() == ["SCORES:", "=============="] + [
        f"{m}: {v:.4f}" for m, v in expected.scores.items()]
    assert [line.split()[2] for line in err.splitlines()] == list(expected.errors)


@pytest.mark.parametrize("task, extra, message", [
    ("dart", ["--categories", "CATS"], "--categories applies to webnlg only"),
    ("webnlg", ["--hyp", "MISSING"], "system output file not found: MISSING"),
    ("webnlg", ["--refs", "MISSING"], "reference file not found: MISSING"),
    ("webnlg", ["--hyp", "SHORT"], "SHORT has 3 system outputs but REFS has 10 reference sets"),
    ("e2e", ["--hyp", "SHORT"], "SHORT has 3 system outputs but REFS has 10 reference sets"),
    ("webnlg", ["--categories", "SHORT"], "SHORT has 3 categories but HYP has 10"),
])
def test_bad_files_exit_2_naming_the_file(tmp_path, capsys, task, extra, message):
    _, _, hyp, grouped, _, cats = _write(tmp_path)
    short = tmp_path / "short.txt"
    short.write_text("a\nb\nc\n", encoding="utf-8")
    names = {"CATS": cats, "MISSING": tmp_path / "missing.txt", "SHORT": short, "REFS": grouped,
             "HYP": hyp}
    args = {"--refs": str(grouped), "--hyp": str(hyp), "--java": NO_JAVA}
    for flag, value in zip(extra[::2], extra[1::2], strict=True):
        args[flag] = str(names[value])
    argv = ["score", task] + [x for kv in args.items() for x in kv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    for key, path in names.items():
        message = message.replace(key, str(path))
    assert err.startswith("adamix-ds score: error:") and message in err


def _console_script() -> str:
    script = Path(sys.executable).with_name("adamix-ds")
    return str(script) if script.exists() else shutil.which("adamix-ds")


@pytest.mark.slow
def test_console_script_webnlg_with_java(tmp_path):
    if shutil.which("java") is None:
        pytest.skip("no java on PATH")
    hyps, refs, hyp, _, multi, cats = _write(tmp_path)
    proc = subprocess.run([_console_script(), "score", "webnlg", "--refs", str(multi / "reference"),
                           "--hyp", str(hyp), "--categories", str(cats)],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    header, *rows = proc.stdout.strip().splitlines()
    assert header.split() == ["BLEU", "METEOR", "TER"]
    assert [r.split()[0] for r in rows] == ["all", "seen", "unseen"]
    assert rows[0].split()[1] == f"{_sacrebleu(hyps, refs):.2f}"
    assert 0 < float(rows[0].split()[2]) < 1
