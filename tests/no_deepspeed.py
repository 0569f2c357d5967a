"""Run a launch script in a subprocess and fail if it imported deepspeed on the way."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

# Runs the script as __main__, then checks sys.modules: the exit code is the script's, or 3 when
# deepspeed was imported (by our code or by a library on its behalf).
_WRAPPER = """
import runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
    code = 0
except SystemExit as stop:
    code = stop.code if isinstance(stop.code, int) else 1
loaded = sorted(m for m in sys.modules if m == "deepspeed" or m.startswith("deepspeed."))
if loaded:
    print(f"deepspeed was imported: {loaded[:3]}", file=sys.stderr)
    code = 3
sys.exit(code)
"""


def run_without_deepspeed(script: Path, args: list[str], **kwargs: Any
                          ) -> subprocess.CompletedProcess:
    """``python script *args`` (``subprocess.run`` keywords pass through); exit code 3 means the
    run imported deepspeed."""
    return subprocess.run([sys.executable, "-c", _WRAPPER, str(script), *args],
                          capture_output=True, text=True, **kwargs)
