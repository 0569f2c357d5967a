"""Where the bundled files (``assets/`` at the repository root) live.

``assets/`` ships with the source tree (a git clone or an editable install), not inside the
``adamix_ds`` package, so a wheel install does not carry it; every function that defaults to a
bundled file therefore also accepts an explicit path.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["REPO_ROOT", "ASSETS_DIR", "bundled_asset"]

# adamix_ds/data/paths.py -> parents[0] = data/, [1] = adamix_ds/, [2] = repository root.
REPO_ROOT: Path = Path(__file__).resolve().parents[2]
ASSETS_DIR: Path = REPO_ROOT / "assets"


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
