"""Finding run folders for the notebooks: `runs_dir` resolved from the working directory, and the
complete runs below it (sweep folders included) that hold the files a notebook needs.

    found = find_runs("runs", needs=("maps.npz",))
    print(found.describe())       # the resolved folder and what was found there
    run_dir = found.pick(None)    # the first run (multi-class first), or one named by its folder

A relative `runs_dir` is looked up in the working directory, then in its parent folders, so the
default "runs" works from the repository root and from notebooks/ alike; the path used is shown.
"""

from dataclasses import dataclass, field
from pathlib import Path

from agpnet.errors import AgpnetError
from agpnet.records import is_complete, load_record

LISTED = 5  # folders named in a one-line message before "and N more"
SHOWN = 20  # runs listed by describe()


def resolve_runs_dir(runs_dir: str | Path) -> Path:
    """The absolute folder meant by `runs_dir`: as given when absolute; else the first existing
    `<cwd>/runs_dir`, `<cwd>/../runs_dir`, ... Raises AgpnetError naming every place tried."""
    path = Path(runs_dir).expanduser()
    if path.is_absolute():
        tried = [path]
    else:
        cwd = Path.cwd()
        tried = [base / path for base in (cwd, *cwd.parents)]
    for candidate in tried:
        if candidate.is_dir():
            return candidate.resolve()
    where = str(tried[0]) if len(tried) == 1 else f"{tried[0]} or the parent folders of {Path.cwd()}"
    raise AgpnetError(f"runs_dir {str(runs_dir)!r}: no such folder (looked for {where})")


@dataclass
class RunsFound:
    """The complete runs below `runs_dir` that have every file of `needs`, and those left out."""

    runs_dir: Path  # resolved, absolute
    needs: tuple[str, ...]
    runs: list[Path] = field(default_factory=list)  # multi-class runs first, then by path
    left_out: list[str] = field(default_factory=list)  # "<name>: <why>" for other record.json folders

    def name(self, run_dir: Path) -> str:
        """The run's folder relative to runs_dir ("." for runs_dir itself)."""
        return Path(run_dir).relative_to(self.runs_dir).as_posix()

    def describe(self) -> str:
        """What was found, for printing: the resolved folder, the runs (the first SHOWN), and what
        was left out and why."""
        what = f"run with {' and '.join(self.needs)}" if self.needs else "complete run"
        if not self.runs:
            return f"No {what} under {self.runs_dir} ({self._left_out_text()})."
        lines = [f"{len(self.runs)} {what.replace('run', 'run(s)', 1)} under {self.runs_dir}:",
                 *(f"  {self.name(r)}" for r in self.runs[:SHOWN])]
        if len(self.runs) > SHOWN:
            lines.append(f"  ... and {len(self.runs) - SHOWN} more")
        if self.left_out:
            lines.append(f"left out: {self._left_out_text()}")
        return "\n".join(lines)

    def pick(self, run: str | Path | None = None) -> Path | None:
        """The run named `run` (its folder relative to runs_dir, or a path), or the first run
        when `run` is None (None when there is none). An unknown name raises AgpnetError."""
        if run is None:
            return self.runs[0] if self.runs else None
        for candidate in self.runs:
            if self.name(candidate) == Path(run).as_posix() or candidate == Path(run).expanduser().resolve():
                return candidate
        names = ", ".join(self.name(r) for r in self.runs[:LISTED]) or "none"
        raise AgpnetError(f"run {str(run)!r}: not among the runs with {' and '.join(self.needs)} under "
                          f"{self.runs_dir} (found: {names}{self._more(len(self.runs))})")

    def require(self) -> "RunsFound":
        """Self, or AgpnetError (one line: the resolved folder and what was found) without runs."""
        if not self.runs:
            what = f" with {' and '.join(self.needs)}" if self.needs else ""
            raise AgpnetError(
                f"runs_dir {self.runs_dir}: no complete run{what} below it ({self._left_out_text()})")
        return self

    def _left_out_text(self) -> str:
        if not self.left_out:
            return "no record.json below it"
        return "found " + "; ".join(self.left_out[:LISTED]) + self._more(len(self.left_out))

    @staticmethod
    def _more(n: int) -> str:
        return f" and {n - LISTED} more" if n > LISTED else ""


def find_runs(runs_dir: str | Path, needs: tuple[str, ...] = ("maps.npz",)) -> RunsFound:
    """Every folder below `runs_dir` (itself included) with a complete record.json and the files
    `needs` (e.g. maps.npz for the viewer, checkpoint.pt for the attention masks)."""
    found = RunsFound(runs_dir=resolve_runs_dir(runs_dir), needs=tuple(needs))
    complete = {}
    for record_path in sorted(found.runs_dir.rglob("record.json")):  # a bad record is listed, not fatal
        run_dir = record_path.parent
        try:
            if is_complete(record_path):
                complete[run_dir] = load_record(record_path)
        except AgpnetError as err:
            found.left_out.append(f"{found.name(run_dir)}: {err}")
            continue
        missing = [n for n in needs if not (run_dir / n).is_file()]
        if run_dir not in complete:
            found.left_out.append(f"{found.name(run_dir)}: run not complete")
        elif missing:
            hint = " (run with save_maps=true)" if "maps.npz" in missing else ""
            found.left_out.append(f"{found.name(run_dir)}: no {' or '.join(missing)}{hint}")
        else:
            found.runs.append(run_dir)
    found.runs.sort(key=lambda r: (complete[r]["setting"] != "multi-class", found.name(r)))
    return found
