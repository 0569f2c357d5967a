"""End-to-end tests of ``launch/train_nlg.py`` on CPU: several ranks, ZeRO stages, resume,
preemption, MPI launch and input errors.

Every run is a real child process (the DeepSpeed launcher, ``mpirun`` or a single process with
the env:// variables) on the tiny presets in ``tests/multirank/presets`` (a 2-layer, 32-wide GPT-2
built from its config, 64 bundled E2E examples), with a timeout so that a hang fails the test
instead of blocking CI; a failing run's output is shown. Runs shared by several tests are
module-scoped fixtures. Oracles:

* 2 ranks x micro batch b (ZeRO-2, ZeRO-3, mpirun) against 1 rank x 2b: the sharded batch order
  gives them the same examples per step and the trainer normalises the loss by the *global*
  target-token count, so per-step losses and the trained experts agree up to float32 rounding.
  ``tiny.yaml`` has no dropout, whose masks depend on the rank.
* resume / preemption against one uninterrupted run of the same command: identical per-step
  losses, learning rates and final experts (``tiny_dropout.yaml``: dropout on, so the masks must
  be replayed too; its warmup outlasts every run, so the LR schedule does not depend on
  ``--max_steps``).
* the tolerances are far below what training changes: 2 ranks vs 1 rank allow 1e-5 relative on
  losses of ~10.8 that training moves by 1e-3 to 5e-2 (``_assert_trains`` checks that the experts
  did train apart); same-world comparisons allow 1e-6 and are bit-identical on CPU.
"""
from __future__ import annotations

import json
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from tests.dist_env import child_env, free_port, single_process_env
from tests.multirank.conftest import (
    BIN,
    HERE,
    REPO_ROOT,
    RUN_TIMEOUT,
    Ranks,
    Run,
    adaptation_tensors,
    assert_rows_close,
    assert_tensors_close,
    kill_tree,
    launcher_cmd,
    log_rows,
    run_ok,
    run_ranks,
    single_cmd,
    steps_of,
    train_args,
)
from tests.multirank.conftest import (
    run as run_child,
)

pytestmark = [pytest.mark.multirank, pytest.mark.slow]

SKEWED_WORKER = HERE / "skewed_routes_worker.py"
TINY = HERE / "presets" / "tiny.yaml"                   # no dropout; 6 steps
TINY_DROPOUT = HERE / "presets" / "tiny_dropout.yaml"   # dropout; 10 steps, warmup 10
STEPS = 6          # tiny.yaml's max_steps
RESUME_STEPS = 10  # tiny_dropout.yaml's max_steps
ERROR_TIMEOUT = 90  # a bad input must be refused before any training

# Float32 rounding differs between 1 rank x 2b and 2 ranks x b (other matmul shapes, other
# reduction order): measured |diff| <= 2e-6 on losses of ~10.8 and <= 3e-6 on 4,095 of the
# 4,096 expert weights; the last one differs by 2.4e-5 (an element whose gradient is ~0, where
# Adam's m / sqrt(v) magnifies the rounding), while training moves tiny.yaml's loss by 1.6e-3 at
# step 3 and 1e-2 to 5e-2 at steps 4-6 (vs. the same run at lr 1e-9) and the weights by ~0.1.
# (Per-rank instead of global token means shift step 1 by 4e-4 already: an rtol of 1e-4, 1e-3
# absolute, would let that through.)
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 5e-5
EXACT_RTOL = 1e-6  # same world size and batch shapes (mpirun vs launcher, resume vs uninterrupted)


def _assert_trains(rows: list[dict[str, float]]) -> None:
    """The comparisons are only meaningful if training changes what they compare. Without
    dropout (tiny.yaml) the consistency KL between two routes is 0 until the experts have been
    trained apart (B starts at 0); it must have grown far beyond the tolerances."""
    assert rows[-1]["consistency"] > 1e-4, f"the experts did not train apart: {rows}"


def assert_run_outputs(result: Run, steps: int) -> None:
    """The files every finished run leaves (train_log.csv checked by the callers)."""
    out = result.out_dir
    assert f"train_nlg: finished at step {steps};" in result.output, result.describe()
    tag = (out / "checkpoints" / "latest").read_text().strip()
    assert tag == f"step{steps:08d}" and any((out / "checkpoints" / tag).iterdir())
    meta = json.loads((out / "adaptation" / "adamix_config.json").read_text())
    assert meta["step"] == steps
    assert (out / "adaptation" / "adamix_model.safetensors").stat().st_size > 0
    assert (out / "loss_curve.png").stat().st_size > 0


# --------------------------------------------------------------------------------------------
# shared runs
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("train_nlg_ranks")


@pytest.fixture(scope="module")
def ds_config(root):
    """ds_config(stage, micro): ds_configs/cpu_zero{stage}.json with that micro batch."""
    def make(stage: int, micro: int) -> Path:
        config = json.loads((REPO_ROOT / "ds_configs" / f"cpu_zero{stage}.json").read_text())
        config["train_micro_batch_size_per_gpu"] = micro
        path = root / f"cpu_zero{stage}_micro{micro}.json"
        path.write_text(json.dumps(config, indent=1))
        return path
    return make


@pytest.fixture(scope="module")
def references(root, ds_config) -> dict[str, Run]:
    """The two 1-process reference runs, started together (a core each):
    ``one_rank``: tiny.yaml, ZeRO-0, micro batch 4 (= 2 ranks x 2);
    ``uninterrupted``: tiny_dropout.yaml, ZeRO-0, micro batch 2, 10 steps (resume, preemption)."""
    specs = {"one_rank": ("1 rank ZeRO-0 micro 4", ds_config(0, 4), TINY),
             "uninterrupted": ("uninterrupted 1 rank", ds_config(0, 2), TINY_DROPOUT)}
    started: dict[str, Ranks] = {}
    try:
        for key, (name, config, preset) in specs.items():
            started[key] = Ranks(name, train_args(config, preset, root / key), 1, root / key)
        results = {key: ranks.finish() for key, ranks in started.items()}
    finally:
        for ranks in started.values():
            for proc in ranks.procs:
                kill_tree(proc)
    for result in results.values():
        if result.rc != 0:
            pytest.fail(f"{result.name} failed\n{result.describe()}")
        print(f"{result.name}: {result.seconds:.1f}s")
    return results


@pytest.fixture(scope="module")
def one_rank(references) -> Run:
    return references["one_rank"]


def _two_ranks(root, ds_config, stage: int) -> Run:
    out = root / f"two_ranks_zero{stage}"
    return run_ok(f"2 ranks ZeRO-{stage} micro 2",
                  launcher_cmd(2, train_args(ds_config(stage, 2), TINY, out)), out, child_env())


@pytest.fixture(scope="module")
def zero2(root, ds_config) -> Run:
    return _two_ranks(root, ds_config, 2)


@pytest.fixture(scope="module")
def zero3(root, ds_config) -> Run:
    return _two_ranks(root, ds_config, 3)


@pytest.fixture(scope="module")
def zero2_bf16(root) -> Run:
    """2 ranks, ZeRO-2, ds_configs/cpu_zero2_bf16.json (micro batch 2), tiny.yaml."""
    config = json.loads((REPO_ROOT / "ds_configs" / "cpu_zero2_bf16.json").read_text())
    config["train_micro_batch_size_per_gpu"] = 2
    path = root / "cpu_zero2_bf16_micro2.json"
    path.write_text(json.dumps(config))
    out = root / "two_ranks_zero2_bf16"
    return run_ok("2 ranks ZeRO-2 bf16 micro 2", launcher_cmd(2, train_args(path, TINY, out)),
                  out, child_env())


@pytest.fixture(scope="module")
def zero3_checkpointed(root, ds_config) -> Run:
    """2 ranks, ZeRO-3, tiny.yaml with activation checkpointing on."""
    preset = yaml.safe_load(TINY.read_text())
    preset["train"]["gradient_checkpointing"] = True
    path = root / "tiny_checkpointed.yaml"
    path.write_text(yaml.safe_dump(preset))
    out = root / "two_ranks_zero3_checkpointed"
    return run_ok("2 ranks ZeRO-3 micro 2, checkpointing",
                  launcher_cmd(2, train_args(ds_config(3, 2), path, out)), out, child_env())


@pytest.fixture(scope="module")
def uninterrupted(references) -> Run:
    result = references["uninterrupted"]
    assert_run_outputs(result, RESUME_STEPS)
    assert steps_of(log_rows(result.out_dir)) == list(range(1, RESUME_STEPS + 1))
    return result


# --------------------------------------------------------------------------------------------
# 1. two ranks (ZeRO-2 / ZeRO-3) == one rank with twice the micro batch
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stage", [2, 3])
def test_two_ranks_match_one_rank_with_double_micro_batch(stage, request, one_rank):
    two = request.getfixturevalue(f"zero{stage}")
    assert_run_outputs(two, STEPS)
    assert_run_outputs(one_rank, STEPS)
    reference = log_rows(one_rank.out_dir)
    assert steps_of(reference) == list(range(1, STEPS + 1))
    _assert_trains(reference)
    assert_rows_close(log_rows(two.out_dir), reference, LOSS_RTOL,
                      f"2 ranks ZeRO-{stage} x micro 2 vs 1 rank x micro 4")
    # The csv_monitor of the shipped config writes under the run directory.
    assert (two.out_dir / "monitor").is_dir()


def test_zero3_with_activation_checkpointing_matches_one_rank(zero3_checkpointed, one_rank):
    """Blocks recomputed in backward under ZeRO-3 (parameters gathered again, routes replayed)
    train exactly as one rank without checkpointing."""
    assert_run_outputs(zero3_checkpointed, STEPS)
    preset = json.loads((zero3_checkpointed.out_dir / "preset.json").read_text())
    assert preset["train"]["gradient_checkpointing"] is True
    assert_rows_close(log_rows(zero3_checkpointed.out_dir), log_rows(one_rank.out_dir),
                      LOSS_RTOL, "2 ranks ZeRO-3 + checkpointing vs 1 rank")


# bf16 against fp32, same ranks and data: measured |diff| <= 5.2e-4 on losses of ~10.8 (5e-5
# relative; the 32-wide model's sums are short, and the loss itself runs in fp32) and <= 4.5e-3
# relative on the consistency term (a difference of two passes, 1e-4 to 1e-2 here).
BF16_LOSS_RTOL, BF16_CONSISTENCY_RTOL = 2e-4, 2e-2


def test_bf16_zero2_tracks_fp32_with_fp32_optimizer_state(zero2_bf16, zero2):
    assert_run_outputs(zero2_bf16, STEPS)
    rows, reference = log_rows(zero2_bf16.out_dir), log_rows(zero2.out_dir)
    assert_rows_close(rows, reference, BF16_LOSS_RTOL, "2 ranks ZeRO-2 bf16 vs fp32",
                      keys=("loss", "task_loss", "lr"))
    assert_rows_close(rows, reference, BF16_CONSISTENCY_RTOL, "2 ranks ZeRO-2 bf16 vs fp32",
                      keys=("consistency",))
    tag = (zero2_bf16.out_dir / "checkpoints" / "latest").read_text().strip()
    folder = zero2_bf16.out_dir / "checkpoints" / tag
    module = torch.load(folder / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    assert module and all(t.dtype == torch.bfloat16 for t in module.values())  # trained in bf16
    for rank in range(2):
        optim = torch.load(folder / f"bf16_zero_pp_rank_{rank}_mp_rank_00_optim_states.pt",
                           weights_only=False)["optimizer_state_dict"]
        masters = optim["single_partition_of_fp32_groups"]
        moments = [t for state in optim["base_optimizer_state"]["state"].values()
                   for k, t in state.items() if k in ("exp_avg", "exp_avg_sq")]
        assert masters and moments
        assert all(t.dtype == torch.float32 for t in [*masters, *moments]), rank


# --------------------------------------------------------------------------------------------
# 2. routes agree on all ranks, and the trainer's check would notice if they did not
# --------------------------------------------------------------------------------------------
def test_route_check_passes_and_stops_a_run_whose_ranks_route_differently(root, ds_config,
                                                                          zero2):
    # The runs above check the route digest after every step (route_check_every: 1) and passed.
    preset = json.loads((zero2.out_dir / "preset.json").read_text())
    assert preset["train"]["route_check_every"] == 1
    assert_run_outputs(zero2, STEPS)
    # The same run with rank 1 routing from another seed must stop at the first check.
    out = root / "skewed_routes"
    args = [str(SKEWED_WORKER), *train_args(ds_config(2, 2), TINY, out)[1:]]
    result = run_ranks("2 ranks, rank 1 with another routing seed", args, 2, out)
    assert result.rc not in (0, None), f"the route mismatch went unnoticed\n{result.describe()}"
    assert "AdaMix routes differ across ranks at step 1: ranks [1] disagree with rank 0" in \
        result.output, result.describe()
    assert steps_of(log_rows(out)) == [1]  # stopped right after the first step's check


# --------------------------------------------------------------------------------------------
# 3. the ZeRO-3 adaptation export is complete
# --------------------------------------------------------------------------------------------
def _fresh_model(preset_json: Path):
    """The run's model as train_nlg builds it before training (same seeds), on this process."""
    from adamix_ds.backbones import load_backbone
    from adamix_ds.inject import inject_adamix
    from adamix_ds.preset import Preset
    from adamix_ds.routing import counter_hash
    from adamix_ds.training import trainer

    preset = Preset.from_dict(json.loads(preset_json.read_text()), source=str(preset_json))
    model = load_backbone(preset.backbone, init=preset.init, seed=preset.train.seed,
                          **preset.backbone_config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(counter_hash(preset.train.seed, trainer._EXPERT_INIT_STREAM) >> 1)
        inject_adamix(model, preset.adamix)
    return model, preset


def test_zero3_adaptation_export_is_complete_and_equals_zero2(zero2, zero3, one_rank):
    from adamix_ds.checkpoint import adaptation_state_dict, load_adaptation
    from adamix_ds.inject import saved_parameters

    model, preset = _fresh_model(zero3.out_dir / "preset.json")
    initial = adaptation_state_dict(model, preset.adamix)
    meta = load_adaptation(model, zero3.out_dir / "adaptation", preset.adamix)
    assert meta["step"] == STEPS
    loaded = {n: p.detach().clone() for n, p in saved_parameters(model, preset.adamix).items()}
    assert len(loaded) == 2 * 2 * 2  # 2 layers x (q, v) x (lora_a, lora_b)
    for name, tensor in loaded.items():
        assert tensor.numel() > 0 and tensor.shape == initial[name].shape, name
        assert torch.isfinite(tensor).all(), name
        change = (tensor - initial[name]).abs().max().item()
        assert change > 1e-3, f"{name} was exported untrained (max change {change:.3g})"
        if name.endswith("lora_b"):  # B starts at 0
            assert tensor.abs().max().item() > 1e-3, name
        else:  # `initial` is this run's init: Adam moved A by <~ the sum of the LRs (0.15 here),
            # an A drawn from another seed would differ by ~0.4 (U(-1/sqrt(32), 1/sqrt(32))).
            assert change < 0.25, f"{name}: initial values not reproduced ({change:.3g})"
    # Same data, same routes: ZeRO-3 (gathered from 2 partitions) == ZeRO-2 == 1 rank.
    assert_tensors_close(loaded, adaptation_tensors(zero2.out_dir), 1e-6, "ZeRO-3 vs ZeRO-2")
    assert_tensors_close(loaded, adaptation_tensors(one_rank.out_dir), WEIGHT_ATOL,
                         "2 ranks ZeRO-3 vs 1 rank")


# --------------------------------------------------------------------------------------------
# 4. exact resume: --max_steps 4, then the same command with --max_steps 8
# --------------------------------------------------------------------------------------------
def test_resume_continues_exactly(root, ds_config, uninterrupted):
    out = root / "resumed"
    args = train_args(ds_config(0, 2), TINY_DROPOUT, out)
    first = run_ok("resume: first 4 steps", single_cmd([*args, "--max_steps", "4"]), out,
                   single_process_env())
    assert_run_outputs(first, 4)
    second = run_ok("resume: steps 5-8", single_cmd([*args, "--max_steps", "8"]), out,
                    single_process_env())
    assert_run_outputs(second, 8)
    rows, reference = log_rows(out), log_rows(uninterrupted.out_dir)
    assert steps_of(rows) == list(range(1, 9))
    # Steps 1-4 equal too: the warmup outlasts both runs, so the LR schedule is the same.
    assert_rows_close(rows, reference[:8], EXACT_RTOL, "resumed vs uninterrupted")


def test_a_corrupt_newest_checkpoint_falls_back_to_the_older_one(root, ds_config,
                                                                 uninterrupted):
    """Truncate the newest checkpoint's model states: the same command names it, resumes from
    the older intact checkpoint and ends as the uninterrupted run; with none intact it exits 2
    with one message (no traceback)."""
    out = root / "corrupt_newest"
    args = [*train_args(ds_config(0, 2), TINY_DROPOUT, out), "--save_every", "2"]
    run_ok("fallback: first 4 steps", single_cmd([*args, "--max_steps", "4"]), out,
           single_process_env())
    newest = out / "checkpoints" / "step00000004"
    assert (out / "checkpoints" / "step00000002" / "manifest.json").is_file()
    states = newest / "mp_rank_00_model_states.pt"
    states.write_bytes(states.read_bytes()[:100])
    second = run_ok("fallback: steps 3-8", single_cmd([*args, "--max_steps", "8"]), out,
                    single_process_env())
    assert f"checkpoint {newest} skipped: {states} has 100 bytes" in second.output
    assert "Traceback" not in second.output
    assert_run_outputs(second, 8)
    rows = log_rows(out)
    assert steps_of(rows) == list(range(1, 9))  # steps 3-4 ran twice, logged once
    assert_rows_close(rows, log_rows(uninterrupted.out_dir)[:8], EXACT_RTOL,
                      "resumed from the older checkpoint vs uninterrupted")
    for tag in (out / "checkpoints").glob("step*"):
        (tag / "manifest.json").unlink()
    third = run_child("fallback: nothing intact", single_cmd([*args, "--max_steps", "10"]), out,
                single_process_env())
    assert third.rc == 2, third.describe()
    assert f"no intact checkpoint in {out / 'checkpoints'}" in third.output
    assert "Traceback" not in third.output


def test_a_full_disk_keeps_the_previous_checkpoint_and_the_next_run_resumes(
        root, ds_config, uninterrupted):
    """ENOSPC in the middle of the step-4 save: the run exits 3 naming the file, the sizes and
    the intact step-2 checkpoint; the partial directory is gone, `latest` still points at step 2;
    the same command then resumes there and ends as the uninterrupted run."""
    out = root / "full_disk"
    args = [*train_args(ds_config(0, 2), TINY_DROPOUT, out), "--save_every", "2",
            "--max_steps", "6"]
    worker = [str(HERE / "enospc_worker.py"), *args[1:]]
    env = dict(single_process_env(), ADAMIX_TEST_ENOSPC_AT="step00000004")
    failed = run_child("full disk at step 4", single_cmd(worker), out, env)
    assert failed.rc == 3, failed.describe()
    assert "saving checkpoint" in failed.output and "No space left on device" in failed.output
    assert "a checkpoint takes" in failed.output and "MiB are free there" in failed.output
    assert "Traceback" not in failed.output
    checkpoints = out / "checkpoints"
    assert (checkpoints / "latest").read_text().strip() == "step00000002"
    assert not (checkpoints / "step00000004").exists()
    resumed = run_ok("after the full disk", single_cmd(args), out, single_process_env())
    assert_run_outputs(resumed, 6)
    assert_rows_close(log_rows(out), log_rows(uninterrupted.out_dir)[:6], EXACT_RTOL,
                      "resumed after a full disk vs uninterrupted")


@pytest.mark.parametrize("fault", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "hung"])
def test_a_lost_rank_stops_the_other_naming_it_and_a_rerun_resumes(root, ds_config, fault):
    """Two env:// ranks (no launcher to clean up after them): rank 1 is killed (SIGKILL) or hangs
    (SIGSTOP: alive, silent) mid-run. Rank 0 must not hang: it exits 4 within the stated bound,
    naming rank 1. The same command on two ranks then resumes from the last checkpoint and
    finishes."""
    preset = yaml.safe_load(TINY.read_text())
    preset["train"].update(max_steps=40, save_every=2, collective_timeout_s=30)
    path = root / "tiny_long.yaml"
    path.write_text(yaml.safe_dump(preset))
    out = root / f"lost_rank_{fault.name}"
    args = train_args(ds_config(2, 2), path, out)
    ranks = Ranks(f"2 ranks, rank 1 sent {fault.name}", args, 2, out)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while not any(r["step"] >= 4 for r in log_rows(out)):
            assert ranks.running() and time.monotonic() < deadline, ranks.result().describe()
            time.sleep(0.05)
        killed_at = time.monotonic()
        ranks.procs[1].send_signal(fault)
        try:
            ranks.procs[0].wait(timeout=60)   # bound: 30 s collective timeout + the heartbeat check
        except subprocess.TimeoutExpired:
            pass                              # reported below, with the ranks' output
        waited = time.monotonic() - killed_at
        rank0_exited = ranks.procs[0].poll() is not None
    finally:
        for proc in ranks.procs:
            kill_tree(proc)
            proc.wait()
    result = ranks.result()
    assert rank0_exited, f"rank 0 still running {waited:.0f} s after rank 1 got {fault.name}\n" \
        + result.describe()
    assert ranks.procs[0].returncode == 4, result.describe()
    assert "rank 1 stopped" in result.output and "Collective timeout: 30 s" in result.output
    print(f"rank 0 stopped {waited:.1f} s after rank 1 got {fault.name}")
    resumed = run_ranks("2 ranks, rerun", args, 2, out)
    assert resumed.rc == 0, resumed.describe()
    assert "resuming from" in resumed.output
    assert_run_outputs(resumed, 40)


# --------------------------------------------------------------------------------------------
# 5. preemption: a signal -> checkpoint at a step boundary on every rank, exit 0, exact resume
# --------------------------------------------------------------------------------------------
@dataclass
class Preemption:
    signum: signal.Signals
    world: int
    signalled: tuple[int, ...]  # ranks that get the signal
    ds_stage: int
    preset: Path
    steps: int                  # the preset's max_steps
    min_steps: int              # logged steps before the signal
    reference: str              # fixture: the same run, uninterrupted


PREEMPTIONS = {
    # 1 process started without a launcher (env:// variables), dropout on.
    "SIGTERM-1-process": Preemption(signal.SIGTERM, 1, (0,), 0, TINY_DROPOUT, RESUME_STEPS, 3,
                                    "uninterrupted"),
    # 2 ranks, ZeRO-2, only rank 1 signalled: the ranks must agree to stop at the same step
    # (the checkpoint save is collective). Reference: the 2-rank ZeRO-2 run of test 1.
    "SIGUSR1-2-ranks-rank-1-only": Preemption(signal.SIGUSR1, 2, (1,), 2, TINY, STEPS, 2,
                                              "zero2"),
}


@pytest.mark.parametrize("case", list(PREEMPTIONS))
def test_preemption_checkpoints_and_resumes_exactly(case, request, root, ds_config):
    spec = PREEMPTIONS[case]
    reference = request.getfixturevalue(spec.reference)
    out = root / f"preempted_{case}"
    args = train_args(ds_config(spec.ds_stage, 2), spec.preset, out)
    ranks = Ranks(f"{case}: until the signal", args, spec.world, out)
    try:
        while len(log_rows(out)) < spec.min_steps:  # handlers are installed before step 1
            if not ranks.running() or time.monotonic() - ranks.start > RUN_TIMEOUT:
                pytest.fail(f"the run ended or stalled before step {spec.min_steps}\n"
                            f"{ranks.result().describe()}")
            time.sleep(0.05)
        for rank in spec.signalled:
            ranks.procs[rank].send_signal(spec.signum)
        stopped = ranks.finish(timeout=time.monotonic() - ranks.start + 60)
    finally:
        for proc in ranks.procs:
            kill_tree(proc)
    assert stopped.rc == 0, stopped.describe()
    rows = log_rows(out)
    k = len(rows)
    assert spec.min_steps <= k < spec.steps, stopped.describe()
    assert steps_of(rows) == list(range(1, k + 1)), stopped.describe()
    # Every rank stopped at the same step (rank 0 when only rank 1 got the signal, too).
    assert stopped.output.count(f"train_nlg: preempted at step {k};") == spec.world, \
        stopped.describe()
    # A complete checkpoint of step k: `latest` names it and its directory holds every rank's
    # files (DeepSpeed's names: ZeRO-2 optimizer partitions per rank).
    checkpoints = out / "checkpoints"
    tag = f"step{k:08d}"
    assert (checkpoints / "latest").read_text().strip() == tag
    files = sorted(p.name for p in (checkpoints / tag).iterdir())
    assert "mp_rank_00_model_states.pt" in files, files
    if spec.world > 1:
        for rank in range(spec.world):
            assert f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt" in files, files
    assert not list(checkpoints.glob(".latest.tmp*"))
    assert json.loads((out / "adaptation" / "adamix_config.json").read_text())["step"] == k

    resumed = run_ranks(f"{case}: resumed", args, spec.world, out)
    assert resumed.rc == 0, resumed.describe()
    assert_run_outputs(resumed, spec.steps)
    expected = log_rows(reference.out_dir)
    rows = log_rows(out)
    assert steps_of(rows) == list(range(1, spec.steps + 1))
    if spec.preset == TINY:
        _assert_trains(expected)
    assert_rows_close(rows, expected, EXACT_RTOL, f"preempted at {k} + resumed vs uninterrupted")
    assert_tensors_close(adaptation_tensors(out), adaptation_tensors(reference.out_dir), 1e-7,
                         "final experts, preempted + resumed vs uninterrupted")


# --------------------------------------------------------------------------------------------
# 6. mpirun (mpich from PyPI) == the DeepSpeed launcher
# --------------------------------------------------------------------------------------------
def test_mpirun_two_ranks_match_deepspeed_launcher(root, ds_config, zero2):
    mpirun = BIN / "mpirun"
    if not mpirun.exists():
        pytest.skip(f"no {mpirun}: pip install -e '.[mpi]' (mpich, mpi4py)")
    pytest.importorskip("mpi4py", reason="DeepSpeed's MPI discovery needs mpi4py")
    out = root / "mpirun_zero2"
    cmd = [str(mpirun), "-np", "2", "-env", "MASTER_ADDR", "127.0.0.1",
           "-env", "MASTER_PORT", str(free_port()),
           *single_cmd(train_args(ds_config(2, 2), TINY, out))]
    result = run_ok("mpirun 2 ranks ZeRO-2 micro 2", cmd, out, child_env())
    assert_run_outputs(result, STEPS)
    assert_rows_close(log_rows(out), log_rows(zero2.out_dir), EXACT_RTOL,
                      "mpirun vs deepspeed launcher")
    assert_tensors_close(adaptation_tensors(out), adaptation_tensors(zero2.out_dir), 1e-7,
                         "mpirun vs deepspeed launcher")


# --------------------------------------------------------------------------------------------
# 7. bad input: exit 2 with a message naming the culprit, before training starts
# --------------------------------------------------------------------------------------------
def _bad_batch_config(tmp_path: Path) -> tuple[list[str], list[str]]:
    config = json.loads((REPO_ROOT / "ds_configs" / "cpu_zero0.json").read_text())
    config.update(train_micro_batch_size_per_gpu=2, train_batch_size=16)  # 2 x 1 x 1 != 16
    path = tmp_path / "contradicting.json"
    path.write_text(json.dumps(config))
    return (["--ds_config", str(path)],
            [str(path), "train_batch_size 16 != train_micro_batch_size_per_gpu 2"])


def _empty_data_dir(tmp_path: Path) -> tuple[list[str], list[str]]:
    empty = tmp_path / "no_data"
    empty.mkdir()
    return (["--data_dir", str(empty)],
            ["e2e train file not found", str(empty / "train.txt")])


def _unknown_backbone(tmp_path: Path) -> tuple[list[str], list[str]]:
    return (["--backbone", "no-such-backbone"], ["unknown backbone 'no-such-backbone'"])


def _target_matches_nothing(tmp_path: Path) -> tuple[list[str], list[str]]:
    values = yaml.safe_load(TINY.read_text())
    pattern = r"transformer\.h\.\d+\.attn\.no_such_proj"
    values["adamix"]["targets"] = ["q", pattern]
    path = tmp_path / "bad_target.yaml"
    path.write_text(yaml.safe_dump(values))
    return (["--preset", str(path)],
            [f"target {pattern!r}", "matches no module", "transformer.h.{i}.attn.c_attn"])


def _fused_loss_under_zero3(tmp_path: Path) -> tuple[list[str], list[str]]:
    config = json.loads((REPO_ROOT / "ds_configs" / "cpu_zero3.json").read_text())
    config["train_micro_batch_size_per_gpu"] = 2
    config_path = tmp_path / "zero3.json"
    config_path.write_text(json.dumps(config))
    values = yaml.safe_load(TINY.read_text())
    values["train"]["fused_loss"] = True
    preset_path = tmp_path / "fused.yaml"
    preset_path.write_text(yaml.safe_dump(values))
    return (["--ds_config", str(config_path), "--preset", str(preset_path)],
            ["train.fused_loss does not support ZeRO stage 3", str(config_path)])


BAD_INPUTS = {"contradicting-ds-config": _bad_batch_config, "empty-data-dir": _empty_data_dir,
              "unknown-backbone": _unknown_backbone,
              "target-matches-nothing": _target_matches_nothing,
              "fused-loss-under-zero3": _fused_loss_under_zero3}


@pytest.fixture(scope="module")
def bad_input_runs(root, ds_config) -> dict[str, tuple[Run, list[str]]]:
    """All bad-input runs at once (each is ~10 s of imports, then the error): case -> (run,
    strings its output must contain)."""
    started = {}
    for case, make in BAD_INPUTS.items():
        case_dir = root / f"bad_{case}"
        case_dir.mkdir()
        flags, expected = make(case_dir)
        out = case_dir / "run"
        args = train_args(ds_config(0, 2), TINY, out)
        for flag, value in zip(flags[::2], flags[1::2], strict=True):  # replace or append
            if flag in args:
                args[args.index(flag) + 1] = value
            else:
                args += [flag, value]
        log = case_dir / "output.log"
        with open(log, "w") as handle:
            proc = subprocess.Popen(single_cmd(args), cwd=REPO_ROOT, env=single_process_env(),
                                    stdout=handle, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        started[case] = (proc, log, out, expected, time.monotonic())
    results = {}
    for case, (proc, log, out, expected, start) in started.items():
        try:
            proc.wait(timeout=max(1.0, ERROR_TIMEOUT - (time.monotonic() - start)))
        except subprocess.TimeoutExpired:
            pass  # rc None: reported by the test
        finally:
            kill_tree(proc)
            proc.wait()
        rc = proc.returncode if proc.returncode is not None and proc.returncode >= 0 else None
        results[case] = (Run(case, rc, log.read_text(), out, time.monotonic() - start), expected)
    return results


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_before_training(case, bad_input_runs):
    result, expected = bad_input_runs[case]
    assert result.rc == 2, result.describe()
    assert result.seconds < ERROR_TIMEOUT
    errors = [line for line in result.output.splitlines() if line.startswith("train_nlg: error:")]
    assert errors, result.describe()
    for part in expected:
        assert part in result.output, f"{part!r} missing\n{result.describe()}"
    assert "Traceback" not in result.output, result.describe()
    out = result.out_dir
    assert not (out / "train_log.csv").exists() and not (out / "checkpoints").exists()
