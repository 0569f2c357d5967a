"""launch/eval_nlg.py end to end on the toy checkpoint, and the report / plot helpers."""
from __future__ import annotations

import json
import statistics
import struct
from pathlib import Path

import pytest

import eval_nlg  # launch/eval_nlg.py
from adamix_ds.evaluation.metrics.e2e import read_hypotheses, read_references, score_e2e
from adamix_ds.evaluation.metrics.meteor import Meteor15
from adamix_ds.evaluation.plots import routing_violin
from adamix_ds.evaluation.report import PAPER_ROWS, markdown_table, paper_scale

REPO = Path(__file__).resolve().parents[1]

FAST_FLAGS = ["--num_beams", "3", "--max_new_tokens", "10", "--limit", "4"]


def _png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; fails if the file is not a PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.mark.slow
def test_eval_script_decodes_scores_and_plots(toy_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    code = eval_nlg.main(["--checkpoint", str(toy_checkpoint), "--output_dir", str(out),
                          "--policies", "merged", "fixed", "--random_routes", "2", *FAST_FLAGS])
    assert code == 0
    report = json.loads((out / "scores.json").read_text())
    assert set(report["policies"]) == {"merged", "fixed"} and len(report["random_routes"]) == 2
    # Every stored score is what the scorer gives on the files written for that decode.
    with Meteor15() as meteor:
        for name in ("merged", "fixed", "random_draw0", "random_draw1"):
            folder = out / "generations" / name
            expected = score_e2e(read_hypotheses(folder / "hypotheses.txt"),
                                 read_references(folder / "references.txt"), meteor=meteor).scores
            run = report["policies"].get(name) or report["random_routes"][int(name[-1])]
            assert run["subsets"]["all"]["scores"] == pytest.approx(expected, abs=1e-12)
    table = (out / "scores.md").read_text()
    assert "AdaMix-LoRA, GPT-2 M (paper) | 71.00 | 8.89 | 46.80 | 72.20 | 2.54 |" in table
    assert "random routing, 2 draws (mean ± std)" in table
    width, height = _png_size(out / "routing_violin.png")
    assert width > 300 and height > 200


def test_bad_random_routes_is_an_error(toy_checkpoint: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    code = eval_nlg.main(["--checkpoint", str(toy_checkpoint), "--random_routes", "-1",
                          "--output_dir", str(tmp_path / "x"), *FAST_FLAGS])
    assert code == 2 and "--random_routes must be >= 0" in capsys.readouterr().err


def _report(task: str) -> dict:
    def run(scores: dict, errors: dict | None = None) -> dict:
        return {"subsets": {"all": {"scores": scores, "errors": errors or {}}}}
    return {"task": task, "split": "test", "contexts": 3, "checkpoint": "ck",
            "policies": {"merged": run({"BLEU": 0.5, "NIST": 4.0}),
                         "fixed": run({"BLEU": 0.25}, {"METEOR": "Java not found"})},
            "random_routes": [run({"BLEU": 0.1, "NIST": 1.0}), run({"BLEU": 0.3, "NIST": 2.0}),
                              run({"BLEU": 0.2, "NIST": 6.0})]}


def test_markdown_table_values() -> None:
    table = markdown_table(_report("e2e"), PAPER_ROWS["e2e"])
    lines = table.splitlines()
    assert "| merged | 50.00 | 4.00 |" in lines[6]          # BLEU x 100, NIST as is
    assert "| fixed | 25.00 | – |" in lines[7]
    # mean and sample std of the three draws, by hand:
    # BLEU 10,30,20 -> 20 ± 10; NIST 1,2,6 -> 3 ± 2.65
    assert f"| 20.00 ± 10.00 | 3.00 ± {statistics.stdev([1.0, 2.0, 6.0]):.2f} |" in lines[8]
    assert "Not computed: fixed/all: {'METEOR': 'Java not found'}" in table
    assert paper_scale("webnlg", "BLEU", 45.1) == 45.1 and paper_scale("e2e", "CIDEr", 2.5) == 2.5


def test_violin_needs_scores(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no random-routing scores"):
        routing_violin({"BLEU": []}, {"BLEU": 0.5}, tmp_path / "v.png")
    path = routing_violin(
        {"BLEU": [0.1, 0.2, 0.4], "NIST": [3.0]}, {"BLEU": 0.3}, tmp_path / "v.png"
    )
    assert _png_size(path)[0] > 0 and not list(tmp_path.glob(".*.tmp"))
