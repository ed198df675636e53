"""Atomic file writes: write to a temporary file in the same folder, then rename.

A reader never sees a half-written file, and an interrupted write leaves the old file intact.
A whole folder (a report, a prediction, a dataset) is built in a staging folder next to it and
swapped in once complete (`replace_folder`): a failure leaves the old folder as it was.
A write that fails (a full disk, a missing permission) raises OSError naming the target file,
not the temporary one.

A process killed during a write (SIGKILL, power loss) leaves its temporary file behind:
`.<name>.<8 random characters>.tmp`, as large as the file it was writing (a checkpoint:
hundreds of MB). The first atomic write into a folder by a process removes such files there
that were last modified before that process started. A writer still at work keeps its
file's modification time current, so a concurrent writer's file is left alone (unless its
clock and this one's disagree by more than the time since this process started).
"""

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

TEMP_SUFFIX = ".tmp"
_TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")  # tempfile.mkstemp(prefix=".<name>.", suffix=".tmp")
_STARTED = time.time()  # temporary files older than this process are leftovers
_swept: set[str] = set()  # folders already cleaned by this process


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)` and rename the result onto `path`; returns `path`."""
    path = Path(path)
    tmp = None
    try:
        tmp = temp_file_for(path, TEMP_SUFFIX)
        write(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and _names_no_other_file(err, path):
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        raise
    return path


def _names_no_other_file(err: OSError, path: Path) -> bool:
    """The error names no file, or our temporary file for `path` (which the user never sees)."""
    return err.filename is None or Path(err.filename).name.startswith(f".{path.name}.")


def temp_file_for(path: Path, suffix: str = TEMP_SUFFIX) -> Path:
    """A new empty file next to `path` (folders created), with the usual permissions, to be
    renamed onto `path` once complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600
    return Path(tmp)


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Delete leftovers of interrupted atomic writes in `folder` (see the module docstring), once
    per folder and process; returns what was deleted."""
    key = os.path.abspath(folder)
    if key in _swept:
        return []
    _swept.add(key)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        try:
            if _TEMP_NAME.fullmatch(entry.name) and entry.is_file() and entry.stat().st_mtime < _STARTED:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:  # gone meanwhile, or not ours to delete: leave it
            continue
    return removed


@contextmanager
def staging_folder(target: str | os.PathLike) -> Iterator[Path]:
    """A new empty folder `.<name>.<random>.staging` next to `target` (same file system, so what
    is built in it can be renamed into place), removed with whatever is left in it at the end."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".staging", dir=target.parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def replace_folder(target: str | os.PathLike, build: Callable[[Path], None]) -> Path:
    """Call `build(staging)` to fill a staging folder next to `target`, then put it in target's
    place (the old folder, if any, is renamed aside, the new one renamed in, the old one removed);
    returns `target`. If `build` raises, `target` is left exactly as it was and nothing else stays."""
    target = Path(target)
    with staging_folder(target) as staging:
        build(staging)
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700
        if not target.exists():
            os.replace(staging, target)
            return target
        with staging_folder(target) as old:
            os.replace(target, old)  # onto the empty folder `old`
            try:
                os.replace(staging, target)
            except BaseException:
                os.replace(old, target)
                raise
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, obj) -> Path:
    """JSON with sorted keys, 2-space indent; NaN is written as null (valid JSON)."""
    return write_text(path, json.dumps(_nan_to_none(obj), indent=2, sort_keys=True) + "\n")


def _nan_to_none(obj):
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_nan_to_none(v) for v in obj]
    return obj
