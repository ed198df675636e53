"""Sweeps: a grid of experiments, each run as a papermill notebook into its own folder; resumable.

Sweep file (YAML)::

    notebook: my_notebook.ipynb    # optional; relative to this file (default: agpnet's train_eval.ipynb)
    out: runs/demo                 # optional (`agpnet sweep --out` wins); relative to the current folder
    description: free text         # optional, ignored
    base:                          # fields of every cell
      dataset: folder
      root: data/synth             # data paths are relative to the current folder
      epochs: 2
    grid:                          # field -> list of values: one cell per combination (cartesian product)
      setting: [multi-class]
      seed: [0, 1]
      blocks: [[3, 6, 9, 12], [9, 10, 11, 12]]   # a list-valued field: a list of lists
    cells:                         # optional: explicit cells, each a mapping of fields
      - {setting: one-class, category: bottle}
    executor:                      # optional: where cells run (Executor; --executor ... flags win)
      kind: ray                    # local (default: one after another here) | ray (agpnet.sweep_ray)
      gpus_per_cell: 0.25

`grid` may also be a list of such mappings; their products are concatenated (an ablation
sweep varies one factor per entry). A cell's fields are `base`, then its grid combination or
explicit cell, then the overrides (`--set key=value`, applied to every cell). Cells with the
same fields run once. Fields are RunConfig field names (docs/contracts.md; dataset, root,
setting, category, shots, seed, epochs, batch_size, image_size, backbone, weights, device,
noise, noise_level, attention, ema_decoder, alpha_schedule, blocks, save_maps, ...).

A cell's name is made of the fields its grid combination or explicit cell sets (not `base`),
in file order: `setting-one-class__category-bottle__seed-0`; characters other than
letters, digits, ".", "_" and "-" become "-", lists are joined by "-". Names are stable: the
same sweep file gives the same names. A cell runs the notebook with papermill into
`<out>/<name>/` (the executed notebook and the run's record.json). Fields that the notebook
declares in its `parameters` cell are passed directly, the others in its `config` dict
parameter; `out_dir` is the cell's folder.

Resuming: a cell is done when its folder holds a record.json with status "complete" AND its
executed notebook (a sweep killed between the two leaves the cell not done); a done cell never
runs again. A cell that fails (an exception in the notebook, even after its record was written,
or no complete record at the end) gets error.json (message and traceback), is "failed" while
that file is there, and the sweep goes on; it runs again only with `retry_failed`. A record.json
the failed notebook wrote is renamed record.failed.json, so that tables, reports and the viewer
(which read record.json) never show a failed cell's numbers. A sweep
killed at any point (Ctrl-C, SIGKILL) and started again re-runs only the cell that was running.
When a cell runs again in a folder that holds a record.json, that record is kept as
`record.previous.json` and everything else of the old run is removed first.

Changed cells: a done cell whose record was made with other fields than the sweep now gives
it (`base` or `--set` changed) is "changed". Fields are compared as RunConfig values (the
record's `config` against `RunConfig.from_flat(notebook defaults + cell fields)`), so defaults
and spellings compare equal; runtime fields (agpnet.config.meaning: device, workers, compilation,
caches, output) do not change a result and are not compared; a field an older record does not
hold counts as changed. Cells whose fields are not
RunConfig fields (another notebook) are not compared. A sweep with changed cells refuses to
start, with one line naming them and their fields; `rerun_changed` (--rerun-changed) runs them
again. `<out>/sweep.json` lists the cells, their statuses and fields (atomic): for a done or
changed cell the fields as its record holds them (null when its record cannot be read as a
RunConfig), so it never shows fields that did not produce the record beside it.
`<out>/.sweep.lock` keeps two sweeps from running in the same folder at once.
"""

import contextlib
import dataclasses
import itertools
import json
import logging
import os
import re
import shutil
import threading
import traceback
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from agpnet.atomic import write_json
from agpnet.environment import timestamp
from agpnet.errors import AgpnetError
from agpnet.progress import PROGRESS_NAME, read_progress
from agpnet.records import complete_record
from agpnet.yamlfile import read_yaml_mapping

# The notebooks and sweep files that ship with the package (in the repository: links to notebooks/, sweeps/).
NOTEBOOKS_DIR = Path(__file__).resolve().parent / "notebooks"
SWEEPS_DIR = Path(__file__).resolve().parent / "sweeps"
SWEEP_KEYS = ("notebook", "out", "description", "base", "grid", "cells", "executor")
KERNEL = "python3"
DONE, FAILED, PENDING, CHANGED = "done", "failed", "pending", "changed"
STATUSES = (DONE, CHANGED, FAILED, PENDING)
PREVIOUS_RECORD = "record.previous.json"
FAILED_RECORD = "record.failed.json"  # the record a failed cell's notebook wrote
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
log = logging.getLogger(__name__)


@dataclass
class Cell:
    name: str
    params: dict  # every field of the cell (base + own + overrides)
    own: dict  # the fields its grid combination or explicit cell set (they make the name)


@dataclass
class Executor:
    """Where the cells run: the sweep file's `executor:` section, `agpnet sweep --executor ...` flags win."""

    kind: str = "local"  # "local": one after another in this process; "ray": Ray tasks (agpnet.sweep_ray)
    address: str | None = None  # ray: "auto" or HOST:PORT of a running cluster; None: a local Ray instance
    # ray: a cell's share of one GPU, 0..1 (0.25 packs 4 on a GPU); None: 1 if there are GPUs, else 0
    gpus_per_cell: float | None = None
    # CPUs per cell = its torch threads; None: torch's default (local), 1 (ray)
    cpus_per_cell: int | None = None
    max_concurrent: int | None = None  # ray: cells at once; None: as many as the resources allow


EXECUTORS = ("local", "ray")
RAY_ONLY = ("address", "gpus_per_cell", "max_concurrent")


@dataclass
class Sweep:
    path: Path
    notebook: Path
    out: Path
    cells: list[Cell]
    executor: Executor


def package_notebook(name: str) -> Path:
    """A notebook that ships with agpnet (the repository's notebooks/)."""
    path = NOTEBOOKS_DIR / name
    if not path.is_file():
        raise AgpnetError(f"{path}: notebook not found (expected it installed with agpnet)")
    return path


def sweep_file_path(sweep_file: str | Path) -> Path:
    """The sweep file: the path given, or, for a bare name such as "demo" that is no file here, the
    sweep of that name shipped with agpnet (sweeps/<name>.yaml)."""
    path = Path(sweep_file)
    if not path.exists() and path.name == str(sweep_file) and (SWEEPS_DIR / f"{path.name}.yaml").is_file():
        return SWEEPS_DIR / f"{path.name}.yaml"
    return path


def load_sweep(sweep_file: str | Path, out: str | Path | None = None, overrides: dict | None = None,
               executor: dict | None = None) -> Sweep:
    """Parse and check a sweep file; the cells with their names and fields. `executor`: Executor
    fields given on the command line (None values are not given)."""
    path = sweep_file_path(sweep_file)
    spec = read_yaml_mapping(path, "sweep file", f"a mapping with keys {', '.join(SWEEP_KEYS)}")
    unknown = sorted(set(spec) - set(SWEEP_KEYS))
    if unknown:
        raise AgpnetError(f"{path}: unknown key(s) {', '.join(unknown)}; expected {', '.join(SWEEP_KEYS)}")
    base = spec.get("base") or {}
    _expect(isinstance(base, dict), path, "`base` must be a mapping of field -> value")
    _expect(all(isinstance(k, str) and k for k in overrides or {}), path, "override keys must be field names")
    overrides = {k.replace("-", "_"): v for k, v in (overrides or {}).items()}  # --set batch-size=4 works too

    owns = []
    grids = spec.get("grid") or []
    grids = [grids] if isinstance(grids, dict) else grids
    _expect(isinstance(grids, list), path,
            "`grid` must be a mapping of field -> list of values, or a list of them")
    for grid in grids:
        _expect(isinstance(grid, dict) and grid, path, "each `grid` entry must be a non-empty mapping")
        for key, values in grid.items():
            _expect(isinstance(values, list) and values, path,
                    f"grid field {key!r} must be a non-empty list of values "
                    "(a list of lists for a list field)")
        owns += [dict(zip(grid, combination)) for combination in itertools.product(*grid.values())]
    explicit = spec.get("cells") or []
    _expect(isinstance(explicit, list) and all(isinstance(c, dict) for c in explicit), path,
            "`cells` must be a list of mappings of field -> value")
    owns += [dict(c) for c in explicit]
    given = {"--set": overrides, "base": base, "grid": [k for g in grids for k in g],
             "cells": [k for c in explicit for k in c]}
    for where, keys in given.items():
        _expect("out_dir" not in {k.replace("-", "_") for k in keys}, path,
                f"{where} sets out_dir, but the sweep runs each cell in <out>/<cell name>; "
                "set where runs go with the sweep's --out or `out:`")
    if not owns:
        owns = [{}]

    cells, seen_params, seen_names = [], set(), set()
    for own in owns:
        own = {k: overrides.get(k, v) for k, v in own.items()}
        params = {**base, **own, **overrides}
        canonical = json.dumps(params, sort_keys=True, default=str)
        if canonical in seen_params:
            continue
        seen_params.add(canonical)
        name = cell_name(own)
        if name in seen_names:
            name = f"{name}-{_short_hash(canonical)}"
        seen_names.add(name)
        cells.append(Cell(name=name, params=params, own=own))

    out = out if out is not None else spec.get("out")
    _expect(out is not None, path, "no output folder: give `out:` in the file or --out")
    notebook = spec.get("notebook")
    notebook = (path.parent / notebook) if notebook else package_notebook("train_eval.ipynb")
    if not notebook.is_file():
        raise AgpnetError(f"{path}: notebook {notebook} not found")
    return Sweep(path=path, notebook=notebook.resolve(), out=Path(out).resolve(), cells=cells,
                 executor=resolve_executor(path, spec.get("executor"), executor or {}))


def resolve_executor(path: Path, section, given: dict) -> Executor:
    """The Executor from the sweep file's `executor:` section and the command line's flags (which
    win; a different --executor drops the file's section). Bad values raise AgpnetError."""
    _expect(section is None or isinstance(section, dict), path,
            f"`executor` must be a mapping with keys {', '.join(Executor.__dataclass_fields__)}")
    section = dict(section or {})
    unknown = sorted(set(section) - set(Executor.__dataclass_fields__))
    _expect(not unknown, path, f"executor: unknown key(s) {', '.join(map(str, unknown))}; "
                               f"expected {', '.join(Executor.__dataclass_fields__)}")
    given = {k: v for k, v in given.items() if v is not None}
    if given.get("kind", section.get("kind", "local")) != section.get("kind", "local"):
        section = {}
    sources = {**{k: f"{path}: executor.{k}" for k in section},
               **{k: "--" + k.replace("_", "-") for k in given}}
    sources["kind"] = "--executor" if "kind" in given else f"{path}: executor.kind"
    values = {**section, **given}

    def check(key: str, ok, expected: str) -> None:
        if key in values and not ok(values[key]):
            raise AgpnetError(f"{sources[key]}: got {values[key]!r}; expected {expected}")

    number = (int, float)
    check("kind", lambda v: v in EXECUTORS, " or ".join(EXECUTORS))
    check("address", lambda v: isinstance(v, str) and v.strip(), "auto or HOST:PORT of a Ray cluster")
    check("gpus_per_cell", lambda v: isinstance(v, number) and not isinstance(v, bool) and 0 <= v <= 1,
          "a number from 0 to 1 (a cell trains on one GPU; 0.25 packs 4 cells on a GPU)")
    for key in ("cpus_per_cell", "max_concurrent"):
        check(key, lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "a whole number >= 1")
    if values.get("kind", "local") == "local":
        for key in RAY_ONLY:
            if key in values:
                raise AgpnetError(f"{sources[key]}: only for the ray executor (--executor ray)")
    return Executor(**values)


def cell_name(own: dict) -> str:
    """Filesystem-safe, stable name from a cell's own fields ("base" when it has none)."""
    parts = [f"{_slug(key)}-{_slug(value)}" for key, value in own.items()]
    name = "__".join(parts) or "base"
    if len(name) > 120:
        name = f"{name[:100]}-{_short_hash(name)}"
    return name


def cell_status(cell_dir: Path, notebook_name: str) -> str:
    """"failed" (error.json), "done" (a complete record.json and the executed notebook
    `notebook_name`) or "pending"."""
    return _cell_state(cell_dir, notebook_name)[0]


def _cell_state(cell_dir: Path, notebook_name: str) -> tuple[str, dict | None]:
    """The cell's status (see cell_status) and, for a done cell, its complete record."""
    if (cell_dir / "error.json").is_file():
        return FAILED, None
    record = _done_record(cell_dir, notebook_name)
    return (DONE, record) if record is not None else (PENDING, None)


def _done_record(cell_dir: Path, notebook_name: str) -> dict | None:
    """The complete record of a cell whose executed notebook is there, else None."""
    if not (cell_dir / notebook_name).is_file():
        return None
    return complete_record(cell_dir / "record.json")


def changed_fields(params: dict, record: dict, defaults: dict) -> dict | None:
    """{field: [recorded, new]} for the fields that change the result (not the runtime ones, see
    agpnet.config.meaning) where a done cell's record differs from `params` as the notebook runs them
    (its `defaults`, then `params`); a field the record does not hold (an older record) counts as
    changed. None when `params` are not RunConfig fields (another notebook: nothing to compare)."""
    from agpnet.config import RunConfig, field_names

    try:
        new = RunConfig.from_flat({**defaults, **params}).to_flat()
    except AgpnetError:
        return None
    old = _recorded_fields(record)
    if old is None:
        return {"config": ["unreadable", "the sweep's"]}
    runtime = field_names(kind="runtime")
    return {k: [old.get(k, "not recorded"), new[k]] for k in new
            if k not in runtime and (k not in old or old[k] != new[k])}


def _recorded_fields(record: dict) -> dict | None:
    """The flat RunConfig fields a record's config holds (coerced as RunConfig does; no defaults
    filled in), or None when it cannot be read as a config."""
    from agpnet.config import SECTIONS, RunConfig

    try:
        config = record["config"]
        held = {k for name, v in config.items() for k in (v if name in SECTIONS else {name: v})}
        return {k: v for k, v in RunConfig.from_dict(config).to_flat().items() if k in held}
    except (AgpnetError, KeyError, TypeError, AttributeError):
        return None


def _survey(sweep: "Sweep", defaults: dict) -> tuple[dict, dict, dict]:
    """Each cell's status (CHANGED for a done cell with changed fields), the fields to list for it in
    sweep.json (a done or changed cell's as recorded; None when its record cannot say) and its
    changed fields."""
    statuses, listed, changes = {}, {}, {}
    for cell in sweep.cells:
        cell_dir = sweep.out / cell.name
        statuses[cell.name], record = _cell_state(cell_dir, sweep.notebook.name)
        listed[cell.name] = cell.params
        if statuses[cell.name] != DONE:
            continue
        changed = changed_fields(cell.params, record, defaults)
        if changed is None:  # not comparable: the sweep's fields are all there is
            continue
        if changed:
            statuses[cell.name], changes[cell.name] = CHANGED, changed
        recorded = _recorded_fields(record)
        listed[cell.name] = (None if recorded is None
                             else {k: recorded.get(k.replace("-", "_")) for k in cell.params})
    return statuses, listed, changes


def run_sweep(sweep_file: str | Path, out: str | Path | None = None, overrides: dict | None = None,
              dry_run: bool = False, retry_failed: bool = False, rerun_changed: bool = False,
              progress: bool = True, executor: dict | None = None) -> dict:
    """Run every cell of a sweep that is not done (see module docstring).

    Returns {"out", "sweep_json", "cells": [{name, status, dir, params}], "done", "changed",
    "failed", "pending" (counts after this call), "ran": [names run now]}. `dry_run` prints the
    cells and their statuses and runs nothing. Changed cells stop the sweep before anything runs
    (AgpnetError) unless `rerun_changed`. `executor`: Executor fields (the command line's)."""
    sweep = load_sweep(sweep_file, out, overrides, executor)
    if sweep.notebook == (NOTEBOOKS_DIR / "train_eval.ipynb").resolve():
        _check_fields(sweep)
    declared = _declared_parameters(sweep.notebook)
    statuses, listed, changes = _survey(sweep, _config_defaults(declared))
    if dry_run:
        _print_cells(sweep, statuses, changes)
        return _summary(sweep, statuses, listed, ran=[])
    if changes and not rerun_changed:
        raise AgpnetError(_changed_message(sweep, changes))
    to_run = [c for c in sweep.cells if statuses[c.name] in (PENDING, CHANGED)
              or (statuses[c.name] == FAILED and retry_failed)]
    with contextlib.ExitStack() as stack:
        # Ray started or joined before the output folder is touched
        if sweep.executor.kind == "ray" and to_run:
            from agpnet import sweep_ray

            resources = stack.enter_context(sweep_ray.session(sweep.executor))
            run_cells = partial(sweep_ray.run_cells, resources=resources)
        else:
            run_cells = _run_cells_here
        _run_locked(sweep, to_run, declared, statuses, listed, run_cells, progress)
    return _summary(sweep, statuses, listed, [c.name for c in to_run])


def _run_locked(sweep: Sweep, to_run: list[Cell], declared: dict, statuses: dict, listed: dict, run_cells,
                progress: bool) -> None:
    """Under the sweep's lock: `run_cells(sweep, to_run, declared, finished, progress)`, where
    `finished(cell, status)` records each cell's new status in sweep.json."""
    from tqdm.auto import tqdm

    sweep.out.mkdir(parents=True, exist_ok=True)
    lock = _lock(sweep.out)
    counts = _counts(statuses)
    log.info("sweep %s: %d cells (%s) in %s, %s executor", sweep.path, len(sweep.cells),
             ", ".join(f"{counts[s]} {s}" for s in STATUSES), sweep.out, sweep.executor.kind)
    bar = tqdm(total=len(sweep.cells), desc=f"sweep {sweep.path.stem}", unit="cell", disable=not progress,
               position=0)

    def finished(cell: Cell, status: str) -> None:
        statuses[cell.name], listed[cell.name] = status, cell.params
        _write_sweep_json(sweep, statuses, listed)
        _show_progress(bar, statuses)

    try:
        _write_sweep_json(sweep, statuses, listed)
        _show_progress(bar, statuses)
        run_cells(sweep, to_run, declared, finished, progress)
    finally:
        bar.close()
        lock.close()


def _run_cells_here(sweep: Sweep, cells: list[Cell], declared: dict, finished, progress: bool) -> None:
    """The local executor: one cell after another in this process."""
    for cell in cells:
        finished(cell, _run_cell(sweep, cell, declared, progress))


def _run_cell(sweep: Sweep, cell: Cell, declared: dict, progress: bool) -> str:
    """Execute one cell here, with its training bar under the sweep's; returns its new status."""
    stop = threading.Event()
    follower = threading.Thread(target=follow_training, args=(sweep.out / cell.name, cell.name, stop),
                                daemon=True)
    try:
        env = {"AGPNET_EXECUTOR": "local", **threads_env(sweep.executor.cpus_per_cell)}
        return execute_cell(sweep.notebook, sweep.out / cell.name, cell, declared, env=env,
                            on_start=follower.start if progress else None)
    finally:
        stop.set()
        if follower.is_alive():
            follower.join()


def execute_cell(notebook: Path, cell_dir: Path, cell: Cell, declared: dict, env: dict | None = None,
                 error_fields: dict | None = None, on_start=None) -> str:
    """Run the notebook with papermill for one cell into `cell_dir`: the executed notebook, and
    error.json (with `error_fields`) when it fails; returns the cell's new status (DONE or
    FAILED). The kernel runs with the environment variables `env` added. `on_start()` is called
    once the folder is ready. A KeyboardInterrupt in the notebook is raised again (the cell stays
    pending: its notebook stays .partial)."""
    import papermill

    cell_dir.mkdir(parents=True, exist_ok=True)
    final = cell_dir / notebook.name
    partial = cell_dir / f".partial.{notebook.name}"
    _clear_old_run(cell_dir, final)
    parameters = notebook_parameters(cell.params, declared, str(cell_dir))
    error_fields = error_fields or {}
    if on_start is not None:
        on_start()
    try:
        with _environment(env or {}):
            papermill.execute_notebook(str(notebook), str(partial), parameters=parameters, kernel_name=KERNEL,
                                       progress_bar=False, log_output=False)
    except papermill.PapermillExecutionError as err:
        if err.ename == "KeyboardInterrupt":  # interrupted, not failed: the cell stays pending
            raise KeyboardInterrupt from None
        _keep_notebook(partial, final)
        write_error(cell_dir, cell, final, f"{err.ename}: {err.evalue}", err.traceback,
                    {"cell_index": err.cell_index, "exec_count": err.exec_count, **error_fields})
        return FAILED
    except Exception as err:  # the kernel died, did not start, ...: record it, go on with the next cell
        _keep_notebook(partial, final)
        write_error(cell_dir, cell, final, f"{type(err).__name__}: {err}",
                    traceback.format_exc().splitlines(), error_fields)
        return FAILED
    _keep_notebook(partial, final)
    if _done_record(cell_dir, notebook.name) is None:
        write_error(cell_dir, cell, final,
                    f"the notebook finished without writing a complete {cell_dir}/record.json",
                    [], error_fields)
        return FAILED
    (cell_dir / "error.json").unlink(missing_ok=True)
    return DONE


def threads_env(cpus: int | None) -> dict:
    """Environment variables that give a kernel `cpus` torch CPU threads and as many CPUs for its
    data-loader workers (agpnet.runtime.usable_cpus); {} for the defaults."""
    if not cpus:
        return {}
    return {"OMP_NUM_THREADS": str(cpus), "MKL_NUM_THREADS": str(cpus), "AGPNET_CPUS": str(cpus)}


@contextlib.contextmanager
def _environment(env: dict):
    """These environment variables set (for the kernel papermill starts) and restored afterwards."""
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _clear_old_run(cell_dir: Path, final: Path) -> None:
    """Before a cell runs: nothing of an earlier run may pass for the new one's. A record.json (a
    changed cell's, or one whose notebook never made it) or a failed cell's FAILED_RECORD is kept
    as record.previous.json and the rest of that run is removed; else an executed notebook of an
    earlier failed attempt is removed (error.json stays until the cell succeeds)."""
    old = [cell_dir / name for name in ("record.json", FAILED_RECORD) if (cell_dir / name).exists()]
    if old:
        os.replace(old[0], cell_dir / PREVIOUS_RECORD)
        for child in cell_dir.iterdir():
            if child.name != PREVIOUS_RECORD:
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    final.unlink(missing_ok=True)
    (cell_dir / PROGRESS_NAME).unlink(missing_ok=True)


def notebook_parameters(params: dict, declared: dict, out_dir: str) -> dict:
    """Papermill parameters: declared fields directly, the others in `config`."""
    if "out_dir" not in declared:
        raise AgpnetError("sweep notebook: its `parameters` cell must declare out_dir")
    direct = {"out_dir": out_dir}
    extra = {}
    for key, value in params.items():
        if key in declared and key != "config":
            direct[key] = value
        else:
            extra[key] = value
    if extra:
        if "config" not in declared:
            raise AgpnetError(f"sweep notebook: fields {', '.join(sorted(extra))} "
                              "are not notebook parameters and its `parameters` cell has no `config` dict")
        direct["config"] = extra
    return direct


def _declared_parameters(notebook: Path) -> dict:
    """The notebook's `parameters` cell: {name: default value as source text}."""
    import papermill

    try:
        return {name: info["default"] for name, info in papermill.inspect_notebook(str(notebook)).items()}
    except Exception as err:
        raise AgpnetError(f"{notebook}: cannot read its parameters ({err})") from None


def _config_defaults(declared: dict) -> dict:
    """The notebook's own values of config fields (literal, not None: None means the config default)."""
    import ast

    from agpnet.config import flat_fields

    defaults = {}
    for name, source in declared.items():
        if name in flat_fields() and name != "out_dir":
            try:
                value = ast.literal_eval(source)
            except (ValueError, SyntaxError):
                continue
            if value is not None:
                defaults[name] = value
    return defaults


def _check_fields(sweep: Sweep) -> None:
    """With the train_eval notebook, every cell must be a valid RunConfig (typos fail before any run)."""
    from agpnet.config import RunConfig

    for cell in sweep.cells:
        try:
            RunConfig.from_flat(cell.params)
        except AgpnetError as err:
            raise AgpnetError(f"{sweep.path}: cell {cell.name}: {err}") from None


def write_error(cell_dir: Path, cell: Cell, notebook: Path, message: str, trace: list[str],
                where: dict) -> None:
    """error.json in the cell's folder: one-line message, traceback, where it failed. A record.json
    there is renamed FAILED_RECORD first: a failed cell's record is not a result."""
    if (cell_dir / "record.json").exists():
        os.replace(cell_dir / "record.json", cell_dir / FAILED_RECORD)
    message = " ".join(_ANSI.sub("", message).split())
    log.warning("sweep cell %s failed: %s (details: %s)", cell.name, message, cell_dir / "error.json")
    write_json(cell_dir / "error.json", {
        "cell": cell.name,
        "message": message,
        "traceback": [_ANSI.sub("", line) for line in trace],
        "notebook": str(notebook),
        "params": cell.params,
        "time": timestamp(),
        **where,
    })


def _keep_notebook(partial: Path, final: Path) -> None:
    if partial.is_file():
        os.replace(partial, final)


def _write_sweep_json(sweep: Sweep, statuses: dict, listed: dict) -> None:
    write_json(sweep.out / "sweep.json", {
        "sweep_file": str(sweep.path.resolve()),
        "notebook": str(sweep.notebook),
        "out": str(sweep.out),
        "updated": timestamp(),
        "executor": dataclasses.asdict(sweep.executor),
        "counts": _counts(statuses),
        "cells": [{"name": c.name, "status": statuses[c.name], "params": listed[c.name]}
                  for c in sweep.cells],
    })


def _summary(sweep: Sweep, statuses: dict, listed: dict, ran: list[str]) -> dict:
    return {
        "out": str(sweep.out),
        "sweep_json": str(sweep.out / "sweep.json"),
        "cells": [{"name": c.name, "status": statuses[c.name], "dir": str(sweep.out / c.name),
                   "params": listed[c.name]} for c in sweep.cells],
        **_counts(statuses),
        "ran": ran,
    }


def _counts(statuses: dict) -> dict:
    values = list(statuses.values())
    return {status: values.count(status) for status in STATUSES}


def _changed_message(sweep: Sweep, changes: dict) -> str:
    shown = [f"{name} ({', '.join(f'{k} {old!r} -> {new!r}' for k, (old, new) in fields.items())})"
             for name, fields in list(changes.items())[:3]]
    more = f" and {len(changes) - 3} more" if len(changes) > 3 else ""
    return (f"{sweep.out}: {len(changes)} done cell(s) ran with other fields than the sweep gives them now: "
            f"{'; '.join(shown)}{more}. Give a new --out to keep both, or add --rerun-changed to run them "
            f"again (each old record is kept as <cell>/{PREVIOUS_RECORD})")


class TrainingBar:
    """One progress line under the sweep's bar for a running cell, drawn from its run folder's
    progress.json (epoch, loss, img/s); `where` (node, GPU) goes in its name."""

    def __init__(self, name: str, position: int = 1, file=None):
        from tqdm.auto import tqdm

        self.name = name
        self.bar = tqdm(desc=name, unit="step", position=position, leave=False, file=file)
        self.bar.set_postfix_str("starting the notebook")
        self.shown = None

    def show(self, run_dir: Path, where: str = "") -> None:
        """Redraw when progress.json changed."""
        desc = f"{self.name} [{where}]" if where else self.name
        if desc != self.bar.desc:
            self.bar.set_description_str(desc)
        live = read_progress(run_dir)
        if live is None or live == self.shown:
            return
        self.shown = live
        try:
            self.bar.total, self.bar.n = int(live["steps"]), int(live["step"])
            if live["stage"] == "train" and live["loss"] is not None:
                self.bar.set_postfix_str(f"epoch {live['epoch']}/{live['epochs']}, loss {live['loss']:.4g}, "
                                         f"{live['img_s']:.1f} img/s")
            else:
                self.bar.set_postfix_str({"features": "computing the clean features", "train": "training",
                                          "trained": "evaluating"}.get(live["stage"], live["stage"]))
        except (KeyError, TypeError, ValueError):  # not what training writes: show nothing of it
            return

    def close(self) -> None:
        self.bar.close()


def follow_training(run_dir: Path, name: str, stop: threading.Event, file=None, every_s: float = 1.0) -> None:
    """Show the run's training (its progress.json) as a bar named `name` until `stop` is set."""
    bar = TrainingBar(name, file=file)
    try:
        while not stop.wait(every_s):
            bar.show(run_dir)
    finally:
        bar.close()


def _print_cells(sweep: Sweep, statuses: dict, changes: dict) -> None:
    width = max(len(c.name) for c in sweep.cells)
    print(f"sweep {sweep.path}: {len(sweep.cells)} cells -> {sweep.out}  (notebook {sweep.notebook})")
    for cell in sweep.cells:
        fields = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.get(cell.name, {}).items())
        print(f"  {statuses[cell.name]:<8} {cell.name:<{width}}{'  ' + fields if fields else ''}")
    counts = _counts(statuses)
    print(", ".join(f"{counts[s]} {s}" for s in STATUSES))


def _show_progress(bar, statuses: dict) -> None:
    counts = _counts(statuses)
    bar.n = counts[DONE] + counts[FAILED]
    bar.set_postfix(done=counts[DONE], failed=counts[FAILED], left=counts[PENDING] + counts[CHANGED],
                    refresh=True)


def _lock(out: Path):
    """An exclusive lock on <out>/.sweep.lock, released when the process ends (even by SIGKILL)."""
    handle = open(out / ".sweep.lock", "a")
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        return handle
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise AgpnetError(f"{out}: another sweep is running in this folder "
                          f"(lock {out / '.sweep.lock'})") from None
    return handle


def _slug(value) -> str:
    if isinstance(value, list | tuple):
        value = "-".join(_slug(v) for v in value)
    elif isinstance(value, bool) or value is None:
        value = str(value).lower()
    return re.sub(r"-+", "-", re.sub(r"[^A-Za-z0-9._-]", "-", str(value))).strip("-") or "x"


def _short_hash(text: str) -> str:
    import hashlib

    return hashlib.sha1(text.encode()).hexdigest()[:8]


def _expect(ok: bool, path: Path, message: str) -> None:
    if not ok:
        raise AgpnetError(f"{path}: {message}")

