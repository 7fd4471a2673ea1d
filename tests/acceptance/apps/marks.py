"""A small app for CLI tests: jobs record that they ran in a directory of marker files."""

import os
import time
from pathlib import Path

import conveyor

app = conveyor.App()  # $CONVEYOR_BROKER_URL
MARKS = Path(os.environ.get("MARKS_DIR", "."))


@app.job(name="mark")
def mark(name: str, seconds: float = 0.0) -> None:
    (MARKS / f"{name}.started.{os.getpid()}").touch()
    time.sleep(seconds)
    (MARKS / f"{name}.done.{os.getpid()}").touch()
