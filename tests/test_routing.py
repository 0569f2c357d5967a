"""Tests for adamix_ds.routing: counter-based, rank-synchronised stochastic routing.

Oracles are independent of the code under test:
* SplitMix64 is checked against a plain-Python transcription of the published generator
  (Steele, Lea & Flood 2014), itself checked against the published seed-0 outputs;
* "same route on every rank" is checked between independently built routers, between separate
  OS processes (``tests/multirank/route_digest_worker.py``) and across a real 2-process gloo group;
* route statistics are checked against the uniform / independent distributions they must follow,
  with tolerances of at least ~4.5 standard deviations at the sample sizes used.
"""
from __future__ import annotations

import collections
import importlib.util
import io
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from adamix_ds.config import INFERENCE_MODES
from adamix_ds.routing import Router, splitmix64
from tests.dist_env import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKER = REPO_ROOT / "tests" / "multirank" / "route_digest_worker.py"

MASK64 = (1 << 64) - 1
GOLDEN_GAMMA = 0x9E3779B97F4A7C15
# Published first outputs of SplitMix64 seeded with 0.
SEED0_OUTPUTS = (0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F)


def _load_worker():
    """Import the worker script by path (tests/ is not a package)."""
    spec = importlib.util.spec_from_file_location("route_digest_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


worker = _load_worker()


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def reference_splitmix64_stream(seed: int):
    """The SplitMix64 generator exactly as published, written independently of the library."""
    state = seed & MASK64
    while True:
        state = (state + GOLDEN_GAMMA) & MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        yield z ^ (z >> 31)


def take(gen, n: int) -> list[int]:
    return [next(gen) for _ in range(n)]


def make_router(seed: int, registrations: Sequence[tuple[str, int, int]] = worker.REGISTRATIONS,
                inference: str = "merged") -> Router:
    router = Router(seed=seed, inference=inference)
    for name, num_down, num_up in registrations:
        router.register(name, num_down, num_up)
    return router


def all_pairs(router: Router, steps, passes=(0, 1)) -> dict[tuple[int, int, int], tuple[int, int]]:
    return {(s, p, k): tuple(router.pair(k, s, p))
            for s in steps for p in passes for k in range(router.num_keys)}


def assert_close_rel(observed: float, expected: float, rel: float, what: str) -> None:
    assert abs(observed - expected) <= rel * expected, (
        f"{what}: observed {observed:.5f}, expected {expected:.5f} +- {rel:.0%}")


# --------------------------------------------------------------------------------------------
# 1. SplitMix64
# --------------------------------------------------------------------------------------------
def test_reference_generator_reproduces_published_seed0_outputs():
    """The plain-Python oracle itself yields the published SplitMix64(seed=0) outputs."""
    assert tuple(take(reference_splitmix64_stream(0), 3)) == SEED0_OUTPUTS


def test_splitmix64_first_output_for_seed_zero():
    """splitmix64(0) is the first published SplitMix64 output for seed 0."""
    assert splitmix64(0) == 0xE220A8397B1DCDAF


@pytest.mark.parametrize("seed", [0, 1, 0xDEADBEEF, MASK64, 2**63 + 12345])
def test_splitmix64_of_state_reproduces_the_generator_sequence(seed):
    """Feeding the generator *state* seed + k*gamma (mod 2**64) gives its (k+1)-th output."""
    expected = take(reference_splitmix64_stream(seed), 500)
    got = [splitmix64((seed + k * GOLDEN_GAMMA) & MASK64) for k in range(500)]
    assert got == expected
    if seed == 0:
        assert tuple(got[:3]) == SEED0_OUTPUTS
    assert all(0 <= v <= MASK64 for v in got)


# --------------------------------------------------------------------------------------------
# 2. same routes on every (simulated) rank
# --------------------------------------------------------------------------------------------
def test_independent_routers_with_same_seed_agree_in_process():
    """Two routers built separately with the same seed and registrations give identical routes
    for every (step, pass, key), whatever order and whatever other calls each one makes."""
    rank0 = make_router(seed=11)
    rank1 = make_router(seed=11)
    steps, passes = range(300), (0, 1, 2)
    routes0 = all_pairs(rank0, steps, passes)
    # rank 1 queries in reverse order with eval draws interleaved: no hidden state is consumed.
    routes1 = {}
    for key in reversed(list(routes0)):
        with rank1.use_inference("random"):
            rank1.route(key[2], training=False)
        s, p, k = key
        routes1[key] = tuple(rank1.pair(k, s, p))
    assert routes1 == routes0

    # The same holds for the public training path, advancing both routers in lockstep.
    for _ in range(50):
        with rank0.use_passes(0, 1), rank1.use_passes(0, 1):
            for k in range(rank0.num_keys):
                assert rank0.route(k, training=True) == rank1.route(k, training=True)
        assert rank0.digest() == rank1.digest()
        rank0.advance()
        rank1.advance()


def _run_routes_worker(seed: int, torch_seed: int, hash_seed: str, steps: int = 40):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONHASHSEED=hash_seed,
               HF_HUB_OFFLINE="1")
    return subprocess.Popen(
        [sys.executable, str(WORKER), "routes", "--seed", str(seed), "--steps", str(steps),
         "--torch-seed", str(torch_seed)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _collect(proc: subprocess.Popen, timeout: float = 60.0) -> list[dict]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("route worker timed out")
    assert proc.returncode == 0, f"route worker failed (rc={proc.returncode}):\n{err}"
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_separate_processes_with_same_seed_agree():
    """Two OS processes (different torch RNG seeds and hash seeds) print identical routes and
    digests for the same routing seed, and they equal the routes computed in this process."""
    procs = [_run_routes_worker(seed=7, torch_seed=1, hash_seed="1"),
             _run_routes_worker(seed=7, torch_seed=999, hash_seed="2")]
    rank0, rank1 = (_collect(p) for p in procs)
    assert [r["step"] for r in rank0] == list(range(40))
    assert rank0 == rank1

    local, other_seed = make_router(seed=7), make_router(seed=8)
    differs = 0
    for record in rank0:
        s = record["step"]
        expected = {f"{k}:{p}": list(local.pair(k, s, p))
                    for k in range(local.num_keys) for p in (0, 1)}
        assert record["routes"] == expected
        assert record["digest"] == local.digest(step=s)
        # The comparison is able to fail: another routing seed gives other routes and digests.
        assert record["digest"] != other_seed.digest(step=s)
        differs += record["routes"] != {f"{k}:{p}": list(other_seed.pair(k, s, p))
                                        for k in range(local.num_keys) for p in (0, 1)}
    assert differs == len(rank0)


# --------------------------------------------------------------------------------------------
# 3./4. route statistics
# --------------------------------------------------------------------------------------------
# Sample sizes put the 5 % relative tolerance on a single expert frequency at >= 4.5 sigma.
NUM_STEPS = {2: 20_000, 3: 20_000, 8: 60_000}
STAT_SEED = 2024


# Pass-coincidence rates are checked at +-10 %, which 20,000 steps resolve at >= 5 sigma.
NUM_PAIRED_STEPS = 20_000


@pytest.fixture(scope="module")
def draws() -> dict[int, list[tuple[int, ...]]]:
    """Per M: (down_p0, up_p0[, down_p1, up_p1]) of one key with M experts per side, per step;
    pass 1 is drawn for the first NUM_PAIRED_STEPS steps only."""
    out = {}
    for m, n in NUM_STEPS.items():
        router = make_router(STAT_SEED, [(f"m{m}", m, m)])
        out[m] = [router.pair(0, s, 0) + (router.pair(0, s, 1) if s < NUM_PAIRED_STEPS else ())
                  for s in range(n)]
    return out


@pytest.mark.parametrize("m", sorted(NUM_STEPS))
def test_expert_frequencies_are_uniform_on_both_sides(draws, m):
    """Over many steps every expert is drawn with frequency 1/M (+-5 % relative), down and up,
    and every draw lies in [0, M)."""
    rows = draws[m]
    for side, name in ((0, "down"), (1, "up")):
        counts = collections.Counter(r[side] for r in rows)
        assert set(counts) == set(range(m)), f"{name}: experts drawn {sorted(counts)}"
        for expert in range(m):
            assert_close_rel(counts[expert] / len(rows), 1 / m, 0.05,
                             f"M={m} {name} expert {expert}")


@pytest.mark.parametrize("m", sorted(NUM_STEPS))
def test_down_and_up_draws_of_a_step_are_independent(draws, m):
    """The joint (down, up) frequency of a step is ~1/M**2 in every cell (+-25 % relative) and
    Pearson's chi-square against independence-uniformity is below df + 6*sqrt(2*df)."""
    rows = draws[m]
    n = len(rows)
    joint = collections.Counter((r[0], r[1]) for r in rows)
    expected = n / m**2
    chi2 = 0.0
    for d in range(m):
        for u in range(m):
            assert_close_rel(joint[(d, u)] / n, 1 / m**2, 0.25, f"M={m} cell ({d},{u})")
            chi2 += (joint[(d, u)] - expected) ** 2 / expected
    df = m * m - 1
    assert chi2 < df + 6 * math.sqrt(2 * df), f"chi2={chi2:.1f} df={df}"


@pytest.mark.parametrize("m", sorted(NUM_STEPS))
def test_routes_change_across_passes_and_steps(draws, m):
    """Pass 0 and pass 1 of a step coincide on a side in ~1/M of steps (+-10 %), not always;
    consecutive steps coincide in ~1/M of steps too."""
    rows = draws[m][:NUM_PAIRED_STEPS]
    n = len(rows)
    for side, name in ((0, "down"), (1, "up")):
        same_pass = sum(r[side] == r[side + 2] for r in rows) / n
        assert_close_rel(same_pass, 1 / m, 0.10, f"M={m} {name}: pass 0 == pass 1")
        same_step = sum(a[side] == b[side] for a, b in zip(rows, rows[1:], strict=False)) / (n - 1)
        assert_close_rel(same_step, 1 / m, 0.10, f"M={m} {name}: step s == step s+1")
    both_sides = sum(r[:2] == r[2:] for r in rows) / n
    assert_close_rel(both_sides, 1 / m**2, 0.15, f"M={m}: full pair pass 0 == pass 1")


@pytest.mark.parametrize("seed_a,seed_b", [(0, 1), (5, 6), (0, 1 << 40), (123, 2**63 + 123)])
def test_different_seeds_give_different_sequences(seed_a, seed_b):
    """Two seeds give route sequences that agree only at chance level (~1/M, +-10 %) and
    digests that differ at every step."""
    m, n = 2, 3000
    a = make_router(seed_a, [("k", m, m)])
    b = make_router(seed_b, [("k", m, m)])
    agree = sum(a.pair(0, s, 0)[0] == b.pair(0, s, 0)[0] for s in range(n)) / n
    assert_close_rel(agree, 1 / m, 0.10, f"seeds {seed_a} vs {seed_b}")
    ra, rb = make_router(seed_a), make_router(seed_b)
    assert all(ra.digest(step=s) != rb.digest(step=s) for s in range(200))


# --------------------------------------------------------------------------------------------
# 5. independence from torch's RNG
# --------------------------------------------------------------------------------------------
def test_routes_ignore_torch_rng_and_do_not_consume_it():
    """Routes are identical whether or not torch's global RNG is reseeded / drawn from between
    calls, and computing routes leaves torch's RNG state untouched."""
    router = make_router(seed=3)
    keys = [(s, p, k) for s in range(60) for p in (0, 1) for k in range(router.num_keys)]
    clean = [router.pair(k, s, p) for s, p, k in keys]

    disturbed = []
    for i, (s, p, k) in enumerate(keys):
        torch.manual_seed(i)
        torch.rand(100)
        disturbed.append(router.pair(k, s, p))
    assert disturbed == clean

    torch.manual_seed(1234)
    state = torch.get_rng_state()
    with router.use_passes(0, 1):
        for k in range(router.num_keys):
            router.route(k, training=True)
        with router.use_inference("ensemble"):
            for k in range(router.num_keys):
                router.route(k, training=False)
    router.digest()
    assert torch.equal(torch.get_rng_state(), state)


# --------------------------------------------------------------------------------------------
# 6. training vs inference policies
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("inference", INFERENCE_MODES)
def test_training_route_uses_step_and_passes(inference):
    """In training, route(key) is (pair(step, p) for p in passes) at the router's current step,
    whatever the eval policy is."""
    router = make_router(seed=21, inference=inference)
    seen = set()
    for target in (0, 5, 37):
        router.advance(target - router.step)
        assert router.step == target
        for k in range(router.num_keys):
            assert router.route(k, training=True) == (router.pair(k, target, 0),)
            with router.use_passes(0, 1):
                assert router.route(k, training=True) == (router.pair(k, target, 0),
                                                          router.pair(k, target, 1))
            with router.use_passes(1):
                assert router.route(k, training=True) == (router.pair(k, target, 1),)
        seen.add(tuple(router.route(k, training=True) for k in range(router.num_keys)))
    assert len(seen) == 3, "training routes did not change with the step"


@pytest.mark.parametrize("passes", [(0,), (0, 1)])
def test_eval_merged_and_fixed(passes):
    """Eval routes: 'merged' -> None (use merged weights); 'fixed' -> expert (0, 0) per pass."""
    router = make_router(seed=4)
    router.advance(9)
    with router.use_passes(*passes):
        with router.use_inference("merged"):
            assert all(router.route(k, training=False) is None for k in range(router.num_keys))
        with router.use_inference("fixed"):
            for k in range(router.num_keys):
                assert router.route(k, training=False) == tuple((0, 0) for _ in passes)


def test_fixed_serves_the_chosen_expert_on_each_routed_side():
    """``fixed_expert = k``: expert k on a side with several experts, expert 0 on a shared side;
    an expert that no side has is an error naming the projection."""
    router = make_router(seed=1, registrations=[("a", 4, 1), ("b", 1, 4), ("c", 4, 4)])
    router.fixed_expert = 3
    with router.use_inference("fixed"), router.use_passes(0, 1):
        assert [router.route(k, training=False) for k in range(3)] == [
            ((3, 0), (3, 0)), ((0, 3), (0, 3)), ((3, 3), (3, 3))]
    router.fixed_expert = 4
    with router.use_inference("fixed"), pytest.raises(ValueError, match="a has 4 down / 1 up"):
        router.route(0, training=False)


@pytest.mark.parametrize("mode", ["random", "ensemble"])
def test_eval_random_routes_are_a_separate_stream(mode):
    """'random'/'ensemble' give deterministic in-range routes, one per pass, drawn from a stream
    that does not replay the training routes of the same step/draw number; ensemble members
    (passes) differ."""
    m = 4
    regs = [(f"k{i}", m, m) for i in range(400)]
    router = make_router(seed=8, registrations=regs)
    for s in (0, 3, 17):
        router.step = router.eval_draw = s
        with router.use_passes(0, 1), router.use_inference(mode):
            evals = [router.route(k, training=False) for k in range(router.num_keys)]
            trains = [router.route(k, training=True) for k in range(router.num_keys)]
            again = [router.route(k, training=False) for k in range(router.num_keys)]
        assert evals == again
        assert all(len(r) == 2 and all(0 <= d < m and 0 <= u < m for d, u in r) for r in evals)
        assert evals != trains
        # Unrelated streams: a key's eval pair equals its training pair at chance level 1/M**2.
        same = sum(e[0] == t[0] for e, t in zip(evals, trains, strict=True)) / len(evals)
        assert same < 3 / m**2, f"eval replays training routes for {same:.0%} of keys"
        members_same = sum(r[0] == r[1] for r in evals) / len(evals)
        assert members_same < 3 / m**2, "ensemble members share routes"
        assert {d for r in evals for d, _ in r} == set(range(m))


def test_use_passes_and_use_inference_restore_state_on_exception():
    """Both context managers restore the previous value when the body raises."""
    router = make_router(seed=0, inference="fixed")
    with pytest.raises(KeyError):
        with router.use_passes(0, 1):
            assert router.passes == (0, 1)
            raise KeyError("boom")
    assert router.passes == (0,)
    with pytest.raises(KeyError):
        with router.use_inference("ensemble"):
            assert router.inference == "ensemble"
            with router.use_passes(3):
                raise KeyError("boom")
    assert router.inference == "fixed"
    assert router.passes == (0,)


def test_invalid_inference_mode_raises_and_names_allowed_modes():
    """An unknown eval policy raises ValueError listing every allowed mode, both at construction
    and in use_inference, and leaves the current mode unchanged."""
    with pytest.raises(ValueError) as ctor_err:
        Router(seed=0, inference="argmax")
    router = make_router(seed=0, inference="random")
    with pytest.raises(ValueError) as ctx_err:
        with router.use_inference("argmax"):
            pass
    assert router.inference == "random"
    for err in (ctor_err, ctx_err):
        message = str(err.value)
        assert "argmax" in message
        for mode in ("merged", "fixed", "random", "ensemble"):
            assert mode in message


# --------------------------------------------------------------------------------------------
# 7. resume
# --------------------------------------------------------------------------------------------
def test_state_dict_round_trip_continues_identical_route_sequence():
    """A router advanced 37 steps, saved (through torch.save) and loaded into a fresh router
    continues the identical training and eval route sequence; a fresh unloaded one does not."""
    original = make_router(seed=99)
    original.advance(37)
    original.eval_draw = 5
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)

    resumed = make_router(seed=99)
    resumed.load_state_dict(torch.load(buffer))
    assert (resumed.step, resumed.eval_draw) == (37, 5)
    fresh = make_router(seed=99)

    def snapshot(r: Router):
        with r.use_passes(0, 1):
            train = [r.route(k, training=True) for k in range(r.num_keys)]
            with r.use_inference("random"):
                evals = [r.route(k, training=False) for k in range(r.num_keys)]
        return train, evals, r.digest()

    assert snapshot(fresh) != snapshot(original)  # the check below can fail
    for _ in range(30):
        assert snapshot(resumed) == snapshot(original)
        original.advance()
        resumed.advance()
    assert resumed.step == original.step == 67


def test_load_state_dict_with_different_seed_raises():
    """Loading a checkpoint of another routing seed raises and leaves the router unchanged."""
    source = make_router(seed=1)
    source.advance(10)
    target = make_router(seed=2)
    target.advance(3)
    with pytest.raises(ValueError, match="seed"):
        target.load_state_dict(source.state_dict())
    assert target.step == 3 and target.seed == 2


# --------------------------------------------------------------------------------------------
# 9. digest
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 77, 2**63 - 1, MASK64])
def test_digest_is_a_non_negative_int63(seed):
    """digest() is a Python int in [0, 2**63) (fits a signed int64 tensor) at every step."""
    router = make_router(seed)
    for s in range(200):
        d = router.digest(step=s)
        assert type(d) is int and 0 <= d < 2**63
        assert int(torch.tensor([d], dtype=torch.int64)[0]) == d


def test_digest_tracks_step_and_registrations():
    """The digest differs at every step, changes when one more key is registered, and
    digest() defaults to the current step."""
    router = make_router(seed=5)
    digests = [router.digest(step=s) for s in range(500)]
    assert len(set(digests)) == 500
    router.advance(42)
    assert router.digest() == digests[42]

    bigger = make_router(seed=5)
    bigger.register("extra", 4, 4)
    assert all(bigger.digest(step=s) != digests[s] for s in range(100))


def test_digest_changes_iff_a_single_key_route_changes():
    """Changing the expert count of one key changes the digest exactly when that key's route
    (either pass) changes; renaming a key (same routes) leaves the digest unchanged."""
    base = make_router(seed=13)
    regs = list(worker.REGISTRATIONS)
    renamed = make_router(seed=13, registrations=[(f"other{i}", d, u)
                                                  for i, (_, d, u) in enumerate(regs)])
    outcomes = collections.Counter()
    for key in range(len(regs)):
        mutated_regs = list(regs)
        mutated_regs[key] = (regs[key][0], 1, 1)  # this key's route becomes (0, 0)
        mutated = make_router(seed=13, registrations=mutated_regs)
        for s in range(40):
            before = [base.pair(key, s, p) for p in (0, 1)]
            after = [mutated.pair(key, s, p) for p in (0, 1)]
            others_equal = all(base.pair(k, s, p) == mutated.pair(k, s, p)
                               for k in range(len(regs)) if k != key for p in (0, 1))
            assert others_equal
            if before != after:
                assert mutated.digest(step=s) != base.digest(step=s), (key, s)
                outcomes["changed"] += 1
                if before[0] == after[0]:
                    outcomes["only pass 1 changed"] += 1
            else:
                assert mutated.digest(step=s) == base.digest(step=s), (key, s)
                outcomes["unchanged"] += 1
            assert renamed.digest(step=s) == base.digest(step=s)
    assert outcomes["changed"] and outcomes["unchanged"] and outcomes["only pass 1 changed"]


# --------------------------------------------------------------------------------------------
# 8. cross-rank digest check over a real gloo group
# --------------------------------------------------------------------------------------------
def test_check_consistency_is_a_noop_without_a_process_group():
    """Without an initialised process group check_consistency() returns without error."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    assert make_router(seed=0).check_consistency() is None


def run_ranks(rank_args: Sequence[Sequence[str]], tmp_path: Path,
              timeout: float = 150.0) -> list[list[dict]]:
    """Launch one worker per rank in a gloo group on 127.0.0.1 and return each rank's JSON lines.

    Fails (never hangs) if any rank exits non-zero or the whole group exceeds ``timeout``: the
    surviving ranks are killed at once.
    """
    world = len(rank_args)
    port = free_port()
    procs, outs, errs = [], [], []
    for rank, args in enumerate(rank_args):
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), HF_HUB_OFFLINE="1",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                   WORLD_SIZE=str(world), GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
        out, err = tmp_path / f"rank{rank}.out", tmp_path / f"rank{rank}.err"
        with open(out, "w") as fo, open(err, "w") as fe:
            procs.append(subprocess.Popen([sys.executable, str(WORKER), "dist", *args],
                                          env=env, stdout=fo, stderr=fe))
        outs.append(out)
        errs.append(err)

    def kill_all():
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            p.wait()

    deadline = time.monotonic() + timeout
    while True:
        codes = [p.poll() for p in procs]
        failed = [r for r, c in enumerate(codes) if c not in (None, 0)]
        if failed:
            kill_all()
            logs = "\n".join(f"--- rank {r} (rc={procs[r].returncode}) ---\n"
                             f"{errs[r].read_text()[-3000:]}" for r in range(world))
            pytest.fail(f"rank(s) {failed} died:\n{logs}")
        if all(c == 0 for c in codes):
            break
        if time.monotonic() > deadline:
            kill_all()
            pytest.fail(f"gloo workers did not finish within {timeout}s")
        time.sleep(0.05)
    return [[json.loads(line) for line in o.read_text().splitlines() if line.strip()]
            for o in outs]


@pytest.mark.multirank
def test_check_consistency_across_two_gloo_ranks(tmp_path):
    """Over a real 2-rank gloo group: same seed and step -> check_consistency passes on both
    ranks; rank 1 with another seed, or one step ahead -> both ranks raise RuntimeError naming
    the step and the disagreeing rank."""
    steps = 5
    args = ["--seed", "31", "--steps", str(steps), "same", "seed", "ahead", "same"]
    results = run_ranks([args, args], tmp_path)
    for rank, lines in enumerate(results):
        by_scenario = [(r["scenario"], r) for r in lines]
        assert [s for s, _ in by_scenario] == ["same", "seed", "ahead", "same"], lines
        for scenario, record in by_scenario:
            assert record["rank"] == rank
            if scenario == "same":
                assert record["ok"] is True, record
                continue
            assert record["ok"] is False, f"rank {rank} did not detect '{scenario}'"
            message = record["error"]
            my_step = steps + 1 if (scenario == "ahead" and rank == 1) else steps
            assert record["step"] == my_step
            assert f"step {my_step}" in message, message
            assert "ranks [1]" in message, message
            if scenario == "ahead":
                # Ranks are grouped by (digest, step) so the odd one out stands out.
                assert f"ranks [0]: step {steps}" in message
                assert f"ranks [1]: step {steps + 1}" in message


@pytest.mark.multirank
def test_run_ranks_fails_instead_of_hanging_when_a_worker_dies(tmp_path):
    """The launcher itself reports a dead rank as a test failure promptly (rank 1 exits with a
    usage error before joining, rank 0 would otherwise wait for it in the rendezvous)."""
    start = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match=r"rank\(s\) \[1\] died"):
        run_ranks([["--seed", "0", "same"], ["--seed", "0", "no-such-scenario"]], tmp_path)
    assert time.monotonic() - start < 30


def test_resume_into_different_adapted_modules_is_an_error():
    """A checkpoint's router state only fits a model with the same routing keys."""
    saved = Router(seed=3)
    for name in ("a", "b"):
        saved.register(name, 4, 1)
    saved.advance(9)
    other = Router(seed=3)
    other.register("a", 4, 1)
    with pytest.raises(ValueError, match="1 routing keys, checkpoint has 2"):
        other.load_state_dict(saved.state_dict())
