"""Resumable checkpoints carry a manifest; resume takes the newest intact one.

Oracles: files written and damaged by hand (truncated, same-size bit flip, deleted, manifest
missing) and hashes from ``hashlib`` computed here, not by the code under test.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from adamix_ds.training.state import (
    LATEST,
    MANIFEST,
    CheckpointError,
    checkpoint_problem,
    choose_checkpoint,
    write_manifest,
)


def _tag(root: Path, step: int, payload: bytes = b"weights" * 100) -> Path:
    tag = root / f"step{step:08d}"
    (tag / "sub").mkdir(parents=True)
    (tag / "mp_rank_00_model_states.pt").write_bytes(payload)
    (tag / "sub" / "optim.pt").write_bytes(payload[::-1] + bytes([step]))
    write_manifest(tag, step)
    return tag


def test_manifest_lists_every_file_with_size_and_sha256(tmp_path):
    tag = _tag(tmp_path, 3)
    manifest = json.loads((tag / MANIFEST).read_text())
    assert manifest["step"] == 3
    assert sorted(manifest["files"]) == ["mp_rank_00_model_states.pt", "sub/optim.pt"]
    for name, entry in manifest["files"].items():
        data = (tag / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert checkpoint_problem(tag) is None


@pytest.mark.parametrize("damage,words", [
    (lambda t: (t / "mp_rank_00_model_states.pt").write_bytes(b"weights"), "has 7 bytes"),
    (lambda t: (t / "sub" / "optim.pt").write_bytes(
        b"X" + (t / "sub" / "optim.pt").read_bytes()[1:]), "does not match its sha256"),
    (lambda t: (t / "sub" / "optim.pt").unlink(), "optim.pt is missing"),
    (lambda t: (t / MANIFEST).unlink(), "manifest.json is missing (the save did not finish)"),
    (lambda t: (t / MANIFEST).write_text("{not json"), "is unreadable"),
])
def test_each_damage_is_named_with_its_file(tmp_path, damage, words):
    tag = _tag(tmp_path, 1)
    damage(tag)
    problem = checkpoint_problem(tag)
    assert problem is not None and words in problem and str(tag) in problem


def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path, capsys):
    _tag(tmp_path, 2)
    newest = _tag(tmp_path, 4)
    (tmp_path / LATEST).write_text(newest.name)
    unfinished = tmp_path / "step00000006"          # a save killed before `latest` moved
    unfinished.mkdir()
    assert choose_checkpoint(tmp_path) == "step00000004"
    (newest / "mp_rank_00_model_states.pt").write_bytes(b"")   # truncated
    assert choose_checkpoint(tmp_path) == "step00000002"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"checkpoint {newest} skipped" in err[0] and "has 0 bytes" in err[0]


def test_no_intact_checkpoint_is_one_clear_error_and_no_checkpoint_is_none(tmp_path):
    assert choose_checkpoint(tmp_path) is None
    for step in (2, 4):
        (_tag(tmp_path, step) / "sub" / "optim.pt").write_bytes(b"")
    (tmp_path / LATEST).write_text("step00000004")
    with pytest.raises(CheckpointError) as err:
        choose_checkpoint(tmp_path)
    message = str(err.value)
    assert f"no intact checkpoint in {tmp_path}" in message
    assert "step00000004" in message and "step00000002" in message and "--no_resume" in message


def test_an_interrupted_first_save_means_a_fresh_start(tmp_path):
    """Killed inside the very first save: a step directory without a manifest and no `latest`
    is no checkpoint at all, not a damaged one."""
    (tmp_path / "step00000002").mkdir()
    (tmp_path / "step00000002" / "mp_rank_00_model_states.pt").write_bytes(b"PK")
    assert choose_checkpoint(tmp_path) is None
    # a finished save that `latest` does not point at yet (killed between the two) is used
    _tag(tmp_path, 4)
    assert choose_checkpoint(tmp_path) == "step00000004"
