"""Live progress of a run in RUN_DIR/progress.json, for watching batch jobs.

Training writes it (atomically, at most every `interval_s` seconds and at the start and end);
`agpnet sweep` shows it as a bar under the sweep's own; anyone can read it, e.g.
`cat runs/x/progress.json` while a papermill job runs. Fields: stage ("features" while the
clean features are cached, "train", "trained" when evaluation starts, or "failed" when training
stopped on an error or an interrupt), epoch and epochs, step and steps (optimiser steps over
the whole run), loss (the latest step's), img_s (training images per second so far), updated
(timestamp). The file is for watching only: a failure to write it is logged once and training
goes on.
"""

import json
import logging
import os
import time
from pathlib import Path

from agpnet.atomic import write_json
from agpnet.environment import timestamp

PROGRESS_NAME = "progress.json"

log = logging.getLogger(__name__)


class ProgressFile:
    """Writes RUN_DIR/progress.json; `update` merges fields and writes when due (or forced)."""

    def __init__(self, run_dir: str | os.PathLike, interval_s: float = 2.0):
        self.path = Path(run_dir) / PROGRESS_NAME
        self.interval_s = interval_s
        self.fields: dict = {}
        self._written = float("-inf")
        self.failed = False

    def update(self, force: bool = False, **fields) -> None:
        self.fields.update(fields)
        now = time.monotonic()
        if force or now - self._written >= self.interval_s:
            self._written = now
            try:
                write_json(self.path, {**self.fields, "updated": timestamp()})
            except OSError as err:
                if not self.failed:
                    log.warning("cannot write %s (%s); training goes on without it", self.path, err)
                self.failed = True


def read_progress(run_dir: str | os.PathLike) -> dict | None:
    """The run's progress.json, or None when there is none (yet) or it cannot be read."""
    try:
        return json.loads((Path(run_dir) / PROGRESS_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
