"""The MS-COCO caption evaluator's tokenization: Stanford PTBTokenizer (stanford-corenlp-3.4.1.jar
from the PyPI ``pycocoevalcap`` package) with ``-preserveLines -lowerCase``, then removal of
punctuation tokens. METEOR, ROUGE_L and CIDEr of the E2E scorer are computed on its output.

The COCO wrapper tokenizes the references and the system outputs in two Java runs, each over one
file with one sentence per line. The tokenizer looks across line ends and treats the end of the
file specially (``U.S.`` at the end of a file stays ``u.s.``, before another line it becomes
``u.s. .``), so the blocks cannot simply be concatenated. Here each block is still its own file,
but all files go through one Java process (``-ioFileList``), which reads each with a fresh lexer.
"""
from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .java import find_java, pycocoevalcap_jar

PTB_JAR = "tokenizer/stanford-corenlp-3.4.1.jar"

# Tokens the COCO wrapper drops after tokenizing. Matching is on the lowercased output, so the
# bracket tokens (-lrb- etc. once lowercased) are in fact never removed.
PUNCTUATIONS = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!",
                          ",", ":", "-", "--", "...", ";"])

# Characters the Java tokenizer treats as line ends. The COCO wrapper replaces only '\n' by a
# space; the others would shift every later sentence by a line. Text read from files by the E2E
# scorer never contains any of them (Python's splitlines() splits on all of them).
_LINE_BREAKS = re.compile("[\n\r\x0b\x0c\u2028\u2029]")


class PTBTokenizerError(RuntimeError):
    """The Java tokenizer failed or returned an unexpected number of lines."""


def _filter_punctuation(line: str) -> str:
    """The COCO wrapper's post-processing of one output line."""
    return " ".join(tok for tok in line.rstrip().split(" ") if tok not in PUNCTUATIONS)


def ptb_tokenize(blocks: Sequence[Sequence[str]], java: str | None = None,
                 timeout: float | None = None) -> list[list[str]]:
    """Tokenize sentences as the COCO caption evaluator does, one Java run for all ``blocks``.

    Args:
        blocks: groups of sentences; each group is tokenized as one file, as the COCO wrapper
            tokenizes the references of a corpus (all of them, instance after instance) and the
            system outputs as two separate files.
        java: the java executable (see :func:`find_java`).
        timeout: seconds before the Java process is killed (None: no limit).

    Returns:
        For each block, its sentences tokenized, lowercased, punctuation tokens removed, tokens
        joined by single spaces (an empty or all-punctuation sentence gives ``''``).

    Raises:
        JavaNotFoundError: no java executable.
        FileNotFoundError: the jar is missing.
        PTBTokenizerError: the tokenizer exited with an error or returned a different number
            of lines than it was given.
    """
    exe = find_java(java)
    jar = pycocoevalcap_jar(PTB_JAR)
    with tempfile.TemporaryDirectory(prefix="adamix-ptb-") as tmp:
        tmpdir = Path(tmp)
        pairs = []
        for i, block in enumerate(blocks):
            src, dst = tmpdir / f"in{i}.txt", tmpdir / f"out{i}.txt"
            # like the wrapper: one sentence per line, no newline after the last one
            src.write_bytes("\n".join(_LINE_BREAKS.sub(" ", s) for s in block).encode("utf-8"))
            pairs.append(f"{src.name}\t{dst.name}\n")  # relative: cwd is tmpdir, no spaces
        listing = tmpdir / "files.txt"
        listing.write_text("".join(pairs), encoding="utf-8")
        cmd = [exe, "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines",
               "-lowerCase", "-ioFileList", listing.name]
        try:
            proc = subprocess.run(cmd, cwd=tmpdir, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired as err:
            raise PTBTokenizerError(
                f"PTB tokenizer ({jar.name}) timed out after {timeout} s") from err
        if proc.returncode != 0:
            tail = proc.stderr.decode("utf-8", "replace").strip()[-2000:]
            raise PTBTokenizerError(f"PTB tokenizer ({' '.join(cmd[:4])} ...) exited with status "
                                    f"{proc.returncode}: {tail or '(no error output)'}")
        result = []
        for i, block in enumerate(blocks):
            out = tmpdir / f"out{i}.txt"
            if not out.is_file():
                raise PTBTokenizerError(f"PTB tokenizer wrote no output for block {i} "
                                        f"({len(block)} sentences)")
            lines = out.read_bytes().decode("utf-8").split("\n")
            # an empty block is an empty file, whose output is '' (one line); otherwise one line
            # per sentence
            if len(lines) != max(len(block), 1):
                raise PTBTokenizerError(f"PTB tokenizer returned {len(lines)} lines for block {i} "
                                        f"of {len(block)} sentences")
            result.append([_filter_punctuation(line) for line in lines[:len(block)]])
    return result
