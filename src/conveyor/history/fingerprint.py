"""Failure fingerprints: group errors that are "the same problem" (re-exported by conveyor.monitor.analysis).

A fingerprint is a short, stable hash of

* the exception type,
* the message with its variable parts replaced by placeholders (UUIDs, emails,
  quoted strings, paths, hex ids, numbers: ``user 42 not found`` and
  ``user 97 not found`` are both ``user <n> not found``),
* the top application frame: the innermost traceback frame that is not in
  site-packages, the standard library or conveyor itself (``file.py:function``),
* the job type.
"""

from __future__ import annotations

import hashlib
import os
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import conveyor

_PLACEHOLDERS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"), "<uuid>"),
    (re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"), "<email>"),
    (re.compile(r"(?<!\w)'[^'\n]*'|(?<!\w)\"[^\"\n]*\""), "<str>"),
    (re.compile(r"\b[A-Za-z]:\\[^\s:;,]+|(?<![\w/.<>])(?:~|\.{1,2})?(?:/[\w.@+-]+)+/?"), "<path>"),
    (re.compile(r"\b0[xX][0-9a-fA-F]+\b|\b(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{8,}\b"), "<hex>"),
    (re.compile(r"\d+(?:\.\d+)?"), "<n>"),
)
_SPACES = re.compile(r"\s+")
_FRAME = re.compile(r'^\s*File "(?P<file>.+)", line \d+, in (?P<func>.+)$')
_MAX_MESSAGE = 500

_CONVEYOR_DIR = str(Path(conveyor.__file__).resolve().parent)
_LIBRARY_DIRS = tuple(
    {
        str(Path(p).resolve())
        for key in ("stdlib", "platstdlib", "purelib", "platlib")
        if (p := sysconfig.get_paths().get(key))
    }
)


@dataclass(frozen=True, slots=True)
class Frame:
    """One traceback frame: file path and function name."""

    file: str
    function: str

    @property
    def label(self) -> str:
        """``basename:function``, the form used in fingerprints."""
        return f"{Path(self.file).name}:{self.function}"


def normalize_message(message: str) -> str:
    """The message with variable parts replaced by placeholders and whitespace collapsed."""
    text = message[:_MAX_MESSAGE]
    for pattern, placeholder in _PLACEHOLDERS:
        text = pattern.sub(placeholder, text)
    return _SPACES.sub(" ", text).strip()


def frames(traceback: str) -> list[Frame]:
    """Frames of the last exception in a formatted traceback, outermost first."""
    blocks = traceback.split("Traceback (most recent call last):")
    found: list[Frame] = []
    for line in blocks[-1].splitlines():
        m = _FRAME.match(line)
        if m:
            found.append(Frame(m["file"], m["func"].strip()))
    return found


def is_library(path: str) -> bool:
    """True for frames in site-packages, the standard library, conveyor or synthetic files."""
    if path.startswith("<") or "site-packages" in path or "dist-packages" in path:
        return True
    try:
        resolved = str(Path(path).resolve())
    except (OSError, ValueError):
        return False
    return any(resolved == d or resolved.startswith(d + os.sep) for d in (_CONVEYOR_DIR, *_LIBRARY_DIRS))


def top_frame(traceback: str) -> Frame | None:
    """The innermost application frame; else the innermost frame; ``None`` without frames."""
    found = frames(traceback)
    for frame in reversed(found):
        if not is_library(frame.file):
            return frame
    return found[-1] if found else None


def fingerprint(error_type: str, message: str, traceback: str, job_type: str) -> str:
    """The 12-hex-digit fingerprint of a failure (see the module docstring)."""
    frame = top_frame(traceback)
    key = "\n".join((error_type, normalize_message(message), frame.label if frame else "", job_type))
    return hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()[:12]
