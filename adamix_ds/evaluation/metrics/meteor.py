"""METEOR 1.5 (Denkowski and Lavie, 2014) through the jar of the PyPI ``pycocoevalcap`` package,
run the way the MS-COCO caption evaluator runs it: ``java -jar -Xmx2G meteor-1.5.jar - - -stdio
-l en -norm``, one ``SCORE`` line per instance, then one ``EVAL`` line over all their statistics.

The corpus score is the jar's own aggregate (from the summed statistics), not the mean of the
segment scores. Starting the jar takes ~20 s (it loads the English paraphrase table), so
:class:`Meteor15` starts the process when it is created and can score several corpora.
"""
from __future__ import annotations

import subprocess
import tempfile
import threading
from collections.abc import Sequence

from .java import find_java, pycocoevalcap_jar

METEOR_JAR = "meteor/meteor-1.5.jar"


class MeteorError(RuntimeError):
    """The METEOR process died or answered something that is not a score."""


def score_line(hypothesis: str, references: Sequence[str]) -> str:
    """The ``SCORE`` request of one instance, as the COCO wrapper writes it: ``|||`` removed from
    the hypothesis (it separates the fields) and its first double spaces made single; the
    references are passed unchanged."""
    hypothesis = hypothesis.replace("|||", "").replace("  ", " ")
    return " ||| ".join(("SCORE", " ||| ".join(references), hypothesis))


class Meteor15:
    """A running METEOR 1.5 process. Use as a context manager, or call :meth:`close`.

    Raises (on creation):
        JavaNotFoundError: no java executable.
        FileNotFoundError: the jar is missing.
    """

    def __init__(self, java: str | None = None):
        exe = find_java(java)
        jar = pycocoevalcap_jar(METEOR_JAR)
        self._stderr = tempfile.TemporaryFile()  # a file, not a pipe: a full pipe would block Java
        # the jar finds its paraphrase table relative to the working directory
        self._proc = subprocess.Popen([exe, "-jar", "-Xmx2G", jar.name, "-", "-", "-stdio", "-l",
                                       "en", "-norm"], cwd=jar.parent, stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=self._stderr)

    def __enter__(self) -> Meteor15:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Stop the process (idempotent)."""
        if self._proc.poll() is None:
            try:
                self._proc.stdin.close()
                self._proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()
        for stream in (self._proc.stdin, self._proc.stdout):
            try:
                stream.close()
            except OSError:  # unwritten input to a process that has died
                pass
        self._stderr.close()

    def _failure(self, what: str) -> MeteorError:
        try:  # a process that closed its output is exiting: wait briefly for its status
            code = self._proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            code = None
        self._stderr.seek(0)
        tail = self._stderr.read().decode("utf-8", "replace").strip()[-2000:]
        state = f"exit status {code}" if code is not None else "still running"
        return MeteorError(
            f"METEOR 1.5 ({METEOR_JAR}) {what} ({state}): {tail or '(no error output)'}")

    def _readline(self) -> str:
        line = self._proc.stdout.readline()
        if not line:
            raise self._failure("closed its output")
        return line.decode("utf-8").strip()

    def _write(self, lines: Sequence[str]) -> None:
        self._proc.stdin.write("".join(f"{line}\n" for line in lines).encode("utf-8"))
        self._proc.stdin.flush()

    def score(self, hypotheses: Sequence[str], references: Sequence[Sequence[str]]
              ) -> tuple[float, list[float]]:
        """METEOR of tokenized ``hypotheses[i]`` against tokenized ``references[i]``.

        Returns:
            (the jar's corpus score, the per-instance scores).

        Raises:
            ValueError: different lengths, no instances, an instance without references.
            MeteorError: the process died or printed something that is not a number.
        """
        if len(hypotheses) != len(references):
            raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference groups")
        if not hypotheses:
            raise ValueError("no hypotheses to score")
        if any(not refs for refs in references):
            raise ValueError("every hypothesis needs at least one reference")
        requests = [score_line(h, refs) for h, refs in zip(hypotheses, references, strict=True)]
        write_error: list[BaseException] = []

        def write_all() -> None:  # a thread, so that neither side blocks on a full pipe
            try:
                self._write(requests)
            except OSError as err:
                write_error.append(err)

        writer = threading.Thread(target=write_all, daemon=True)
        writer.start()
        try:
            stats = [self._readline() for _ in requests]
        finally:
            writer.join()
        if write_error:
            raise self._failure(f"stopped reading its input ({write_error[0]})")
        try:
            self._write(["EVAL" + "".join(f" ||| {s}" for s in stats)])
            answers = [self._readline() for _ in range(len(requests) + 1)]
        except OSError as err:
            raise self._failure(f"stopped reading its input ({err})") from err
        try:
            values = [float(a) for a in answers]
        except ValueError as err:
            raise self._failure(f"answered something that is not a score: {err}") from err
        return values[-1], values[:-1]


def meteor(hypotheses: Sequence[str], references: Sequence[Sequence[str]],
           java: str | None = None) -> tuple[float, list[float]]:
    """Corpus METEOR 1.5 (and per-instance scores) with a process of its own."""
    with Meteor15(java) as scorer:
        return scorer.score(hypotheses, references)
