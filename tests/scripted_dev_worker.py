"""launch/train_nlu.py with a scripted dev metric, for tests/test_dev_selection.py.

The NLU task's dev evaluation is replaced by a table ``$ADAMIX_TEST_DEV_SCRIPT``
("micro_step:accuracy,..."), looked up by the router's micro-step when the loop evaluates, so the
best evaluation is known in advance. ``$ADAMIX_TEST_PREEMPT_AT`` (a micro-step) sends this process
SIGUSR1 during that evaluation, once (a marker file beside the output remembers it), so the run
saves, exits as preempted, and the same command resumes it.
"""
from __future__ import annotations

import os
import runpy
import signal
import sys
from pathlib import Path

import adamix_ds.training.trainer as trainer
from adamix_ds.tasks.nlu import nlu_task

SCRIPT = {int(k): float(v) for k, v in
          (item.split(":") for item in os.environ["ADAMIX_TEST_DEV_SCRIPT"].split(","))}
PREEMPT_AT = int(os.environ.get("ADAMIX_TEST_PREEMPT_AT", "-1"))
MARKER = Path(os.environ.get("ADAMIX_TEST_MARKER", "/nonexistent/marker"))


def scripted_nlu_task(preset):
    task = nlu_task(preset)

    def evaluate(module, router):
        assert not module.training, "dev evaluation must run in eval mode"
        if router.step == PREEMPT_AT and not MARKER.exists():
            MARKER.touch()
            os.kill(os.getpid(), signal.SIGUSR1)
        return {"accuracy": SCRIPT[router.step], "f1": 0.0}

    task.evaluate = evaluate
    return task


trainer.nlu_task = scripted_nlu_task
TRAIN = Path(__file__).resolve().parents[1] / "launch" / "train_nlu.py"
sys.argv = [str(TRAIN), *sys.argv[1:]]
runpy.run_path(str(TRAIN), run_name="__main__")
