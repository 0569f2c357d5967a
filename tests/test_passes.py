"""``routed_passes``: which forwards run, with which routes, on which inputs."""
from __future__ import annotations

import pytest
import torch

from adamix_ds.routing import Router
from adamix_ds.tasks.base import PASS_SCHEDULES, routed_passes


def _recording_run(router: Router, calls: list[tuple[tuple[int, ...], int]]):
    def run(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        calls.append((tuple(router.passes), inputs["x"].shape[0]))
        # each row's output is its input times (1 + the pass its segment is routed with)
        segment = inputs["x"].shape[0] // len(router.passes)
        factor = torch.tensor(router.passes, dtype=torch.float32).repeat_interleave(segment)
        return inputs["x"] * (1 + factor)
    return run


@pytest.mark.parametrize(("schedule", "want_calls"), [
    ("paired", [((0, 1), 6)]),
    ("sequential", [((0,), 3), ((1,), 3)]),
    ("off", [((0,), 3)]),
])
def test_schedules_run_the_forwards_they_promise(schedule: str, want_calls: list) -> None:
    router, calls = Router(seed=0), []
    x = torch.tensor([1.0, 2.0, 3.0])
    first, second = routed_passes(_recording_run(router, calls), {"x": x}, router, schedule)
    assert calls == want_calls
    torch.testing.assert_close(first, x)            # pass 0 everywhere: factor 1
    if schedule == "off":
        assert second is None
    else:
        torch.testing.assert_close(second, 2 * x)   # pass 1: factor 2
    assert router.passes == (0,)                    # the router is left as it was


def test_unknown_schedule_names_the_argument() -> None:
    with pytest.raises(ValueError, match=r"consistency must be one of \['paired'"):
        routed_passes(lambda inputs: inputs["x"], {"x": torch.ones(2)}, Router(), "twice")
    assert PASS_SCHEDULES == ("paired", "sequential", "off")
