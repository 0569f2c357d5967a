"""Where data comes from: an explicit folder, ``$ADAMIX_DS_DATA``, or the bundled samples.

``ADAMIX_DS_DATA`` names a data root with one folder per family (``e2e/``, ``webnlg/``, ``dart/``,
``glue/<TASK>/``, ``glue/LM-BFF-k-shot/``); readers use it when no folder is passed. Without it
they read the small real samples bundled in ``assets/`` at the repository root.

``assets/`` ships with the source tree (a git clone or an editable install), not inside the
``adamix_ds`` package, so a wheel install does not carry it; every function that defaults to a
bundled file therefore also accepts an explicit path.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["REPO_ROOT", "ASSETS_DIR", "DATA_ENV", "bundled_asset", "env_data_dir"]

# adamix_ds/data/paths.py -> parents[0] = data/, [1] = adamix_ds/, [2] = repository root.
REPO_ROOT: Path = Path(__file__).resolve().parents[2]
ASSETS_DIR: Path = REPO_ROOT / "assets"
DATA_ENV = "ADAMIX_DS_DATA"


def env_data_dir(family: str) -> Path | None:
    """``$ADAMIX_DS_DATA/<family>`` when the variable is set, else None (use the bundled sample).

    Raises:
        FileNotFoundError: the variable is set but that folder does not exist.
    """
    root = os.environ.get(DATA_ENV, "").strip()
    if not root:
        return None
    folder = Path(root).expanduser() / family
    if not folder.is_dir():
        raise FileNotFoundError(f"${DATA_ENV}={root}: no {family}/ folder there ({folder})")
    return folder


def bundled_asset(path: str | Path = "") -> Path:
    """Absolute path of a bundled file or folder under ``<repo>/assets``.

    Args:
        path: path relative to ``assets/``, e.g. ``"gpt2_tokenizer"`` or ``"e2e_sample/test.txt"``;
            ``""`` gives the ``assets`` folder itself.

    Returns:
        The existing path.

    Raises:
        FileNotFoundError: it does not exist (e.g. a wheel install, which has no ``assets/``).
    """
    rel = Path(path)
    if rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"bundled_asset expects a path relative to assets/, got {str(path)!r}")
    full = ASSETS_DIR / rel
    if not full.exists():
        raise FileNotFoundError(
            f"bundled asset {str(path)!r} not found at {full}: assets/ comes with the source "
            "tree (git clone / pip install -e .), not with a wheel; pass an explicit path instead"
        )
    return full
