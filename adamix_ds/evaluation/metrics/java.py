"""Locating Java and the jars of the PyPI ``pycocoevalcap`` package (METEOR 1.5, Stanford PTB
tokenizer), with errors that say what to install or which flag to set."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

JAVA_ENV = "ADAMIX_JAVA"


class JavaNotFoundError(RuntimeError):
    """No usable ``java`` executable: METEOR and the PTB tokenizer cannot run."""


def find_java(java: str | None = None) -> str:
    """The java executable to run: ``java`` if given, else ``$ADAMIX_JAVA``, else ``java`` on PATH.

    Raises:
        JavaNotFoundError: naming what was tried and how to point at a Java 8+ runtime.
    """
    candidate = java or os.environ.get(JAVA_ENV) or "java"
    resolved = shutil.which(candidate)
    if resolved is None:
        source = "--java" if java else (f"${JAVA_ENV}" if os.environ.get(JAVA_ENV) else "PATH")
        raise JavaNotFoundError(
            f"Java not found: {candidate!r} (from {source}) is not an executable. METEOR 1.5 is a "
            f"Java program (and for E2E so is the PTB tokenizer behind METEOR, ROUGE_L and "
            f"CIDEr); install a Java 8+ runtime or pass --java /path/to/java (or set {JAVA_ENV}).")
    return resolved


def pycocoevalcap_jar(relative: str) -> Path:
    """Path of a jar inside the installed ``pycocoevalcap`` package, e.g. ``meteor/meteor-1.5.jar``.

    Raises:
        FileNotFoundError: if the package or the jar is missing (``pip install pycocoevalcap``).
    """
    try:
        import pycocoevalcap  # namespace package: no __file__, use __path__
    except ImportError as err:
        raise FileNotFoundError(
            "pycocoevalcap is not installed; it ships the METEOR 1.5 and PTB tokenizer jars: "
            "pip install 'adamix-ds[eval]' (or pip install pycocoevalcap)") from err
    for root in pycocoevalcap.__path__:
        path = Path(root) / relative
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{relative} not found in pycocoevalcap at {list(pycocoevalcap.__path__)}"
    )
