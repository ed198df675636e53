"""Sweeps: cell expansion and names, dry run, overrides, failures, kill + resume (papermill)."""

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from fixtures_runs import REPO, require_kernel, write_notebook

from agpnet.errors import AgpnetError
from agpnet.progress import ProgressFile
from agpnet.sweep import cell_status, follow_training, load_sweep, notebook_parameters, run_sweep

# A tiny notebook: logs each start to `log`, fails when <out>/fail-<n> exists, else writes a record.
PARAMETERS = 'out_dir = ""\nn = 0\nlog = ""\nconfig = {}'
BODY = textwrap.dedent("""
    import os, time
    from pathlib import Path
    from agpnet.atomic import write_json
    (Path(out_dir) / "kernel.pid").write_text(str(os.getpid()))
    with open(log, "a") as f:
        f.write(Path(out_dir).name + "\\n")
    time.sleep(config.get("sleep", 0))
    if (Path(out_dir).parent / f"fail-{n}").exists():
        raise ValueError(f"boom in cell {n}")
    write_json(Path(out_dir) / "record.json", {"status": "complete", "n": n, "config": config})
    time.sleep(config.get("sleep_after", 0))
    if (Path(out_dir).parent / f"fail-after-{n}").exists():
        raise ValueError(f"boom after the record of cell {n}")
""")

# A notebook whose record holds a RunConfig (as train_eval's does), without training: its own
# default for `root`, every other field in `config`; logs each start to <out>/starts.txt.
CONFIG_PARAMETERS = 'out_dir = ""\nroot = "nb-root"\nconfig = {}'
CONFIG_BODY = textwrap.dedent("""
    from pathlib import Path
    from agpnet.atomic import write_json
    from agpnet.config import RunConfig
    with open(Path(out_dir).parent / "starts.txt", "a") as f:
        f.write(Path(out_dir).name + "\\n")
    cfg = RunConfig.from_flat({"root": root, **config, "out_dir": out_dir})
    write_json(Path(out_dir) / "record.json", {"status": "complete", "config": cfg.to_dict()})
""")


def run_in_subprocess(sweep_file: Path, **kwargs) -> subprocess.Popen:
    """run_sweep(sweep_file, **kwargs) in a process (and session) of its own, for killing it."""
    code = f"import sys; from agpnet.sweep import run_sweep; run_sweep(sys.argv[1], progress=False, **{kwargs!r})"
    return subprocess.Popen([sys.executable, "-c", code, str(sweep_file)], cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def tiny_sweep(tmp_path: Path, n_values=(1, 2, 3), sleep: float = 0.0) -> Path:
    write_notebook(tmp_path / "tiny.ipynb", PARAMETERS, BODY)
    return write_yaml(
        tmp_path / "tiny.yaml",
        f"""
        notebook: tiny.ipynb
        out: {tmp_path / "out"}
        base: {{log: {tmp_path / "log.txt"}, sleep: {sleep}}}
        grid: {{n: {list(n_values)}}}
    """,
    )


def alive(pid: int) -> bool:
    """The process runs (a zombie, waiting for its parent to reap it, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    try:
        return not stat.read_text().rsplit(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return True


def wait_for(condition, what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        time.sleep(0.05)


def wait_for_kernel_end(cell_dir: Path, settle_s: float = 2.0) -> None:
    """The kernel of a killed sweep's cell (if it started) ends within seconds (ipykernel follows its
    parent): no running process named by <cell>/kernel.pid for `settle_s` in a row, within 30 s."""
    started = quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < settle_s:
        try:
            running = alive(int((cell_dir / "kernel.pid").read_text()))
        except (OSError, ValueError):  # no kernel (yet)
            running = False
        if running:
            quiet_since = time.monotonic()
        assert time.monotonic() - started < 30, f"the kernel of {cell_dir.name} still runs"
        time.sleep(0.05)


def followers() -> list[threading.Thread]:
    """Running threads but tqdm's own monitor (it starts with the first bar and stays)."""
    return [t for t in threading.enumerate() if t.name != "tqdm_monitor"]


def starts(tmp_path: Path) -> list[str]:
    log = tmp_path / "log.txt"
    return log.read_text().split() if log.exists() else []


def test_cells_from_base_grids_cells_and_overrides(tmp_path):
    sweep_file = write_yaml(
        tmp_path / "s.yaml",
        """
        out: runs/x
        base: {dataset: mvtec, root: /data, epochs: 2, noise: attention, blocks: [3, 6, 9, 12]}
        grid:
          - {setting: [multi-class], noise: [attention, none]}
          - {setting: [multi-class], blocks: [[3, 6, 9, 12], [9, 10, 11, 12]]}
        cells:
          - {setting: one-class, category: "bottle/odd name"}
    """,
    )
    sweep = load_sweep(sweep_file)
    names = [c.name for c in sweep.cells]
    # The baseline appears in both grids (noise=attention, blocks=3,6,9,12): it runs once.
    assert names == [
        "setting-multi-class__noise-attention",
        "setting-multi-class__noise-none",
        "setting-multi-class__blocks-9-10-11-12",
        "setting-one-class__category-bottle-odd-name",
    ]
    assert sweep.cells[2].params == {
        "dataset": "mvtec",
        "root": "/data",
        "epochs": 2,
        "noise": "attention",
        "blocks": [9, 10, 11, 12],
        "setting": "multi-class",
    }
    assert sweep.out == Path("runs/x").resolve()
    assert sweep.notebook.name == "train_eval.ipynb"
    assert load_sweep(sweep_file).cells == sweep.cells  # stable

    # Overrides apply to every cell; overriding a grid field narrows the grid (duplicates run once).
    narrowed = load_sweep(sweep_file, out=tmp_path / "o", overrides={"noise": "none", "epochs": 1})
    assert [c.name for c in narrowed.cells] == [
        "setting-multi-class__noise-none",
        "setting-multi-class__blocks-9-10-11-12",
        "setting-one-class__category-bottle-odd-name",
    ]
    assert all(c.params["epochs"] == 1 and c.params["noise"] == "none" for c in narrowed.cells)
    assert narrowed.out == tmp_path / "o"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("out: o\ngrid: {seed: 0}\n", "grid field 'seed' must be a non-empty list"),
        ("out: o\ngrids: {seed: [0]}\n", "unknown key(s) grids"),
        ("grid: {seed: [0]}\n", "no output folder"),
        ("out: o\ncells: {seed: 0}\n", "`cells` must be a list"),
        ("- just a list\n", "expected a mapping"),
        ("out: o\nbase: {epochs: [1\n", "not valid YAML"),
        # were a TypeError from sorting mixed keys; out_dir: each cell trained into the wrong folder
        ("out: o\ngrid: {1: [2]}\n", "line 2: key 1: expected a non-empty string"),
        ("out: o\nbase: {epochs: 1, null: 3}\n", "line 2: key None: expected a non-empty string"),
        ("out: o\ncells:\n  - {seed: 0}\n  - {2: 0}\n", "line 4: key 2: expected a non-empty string"),
        ("out: o\nbase: {out_dir: /elsewhere}\n", "base sets out_dir"),
        ("out: o\ngrid: {out-dir: [a, b]}\n", "grid sets out_dir"),
        ("out: o\ncells: [{out_dir: a}]\n", "cells sets out_dir"),
    ],
)
def test_bad_sweep_files(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(AgpnetError) as err:
        load_sweep(path)
    assert expected in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


def test_unknown_config_field_fails_before_running(tmp_path):
    sweep_file = write_yaml(
        tmp_path / "s.yaml",
        f"""
        out: {tmp_path / "out"}
        base: {{dataset: mvtec, root: /data, epochz: 3}}
    """,
    )
    with pytest.raises(AgpnetError, match="cell base: unknown config field 'epochz'"):
        run_sweep(sweep_file, dry_run=True)
    assert not (tmp_path / "out").exists()


def test_notebook_parameters_declared_directly_others_in_config():
    params = {"dataset": "mvtec", "noise": "none", "epochs": 3}
    assert notebook_parameters(params, {"out_dir", "dataset", "epochs", "config"}, "/o") == {
        "out_dir": "/o",
        "dataset": "mvtec",
        "epochs": 3,
        "config": {"noise": "none"},
    }
    with pytest.raises(AgpnetError, match="no `config` dict"):
        notebook_parameters(params, {"out_dir", "dataset"}, "/o")


def test_dry_run_lists_statuses_and_writes_nothing(tmp_path, capsys):
    sweep_file = tiny_sweep(tmp_path)
    out = tmp_path / "out"
    (out / "n-1").mkdir(parents=True)
    (out / "n-1" / "record.json").write_text(json.dumps({"status": "complete"}))
    (out / "n-1" / "tiny.ipynb").write_text("{}")  # the executed notebook
    (out / "n-2").mkdir()
    (out / "n-2" / "error.json").write_text("{}")
    (out / "n-3").mkdir()
    (out / "n-3" / "record.json").write_text(json.dumps({"status": "running"}))  # not complete: pending

    summary = run_sweep(sweep_file, dry_run=True)
    assert [(c["name"], c["status"]) for c in summary["cells"]] == [
        ("n-1", "done"),
        ("n-2", "failed"),
        ("n-3", "pending"),
    ]
    assert (summary["done"], summary["failed"], summary["pending"], summary["ran"]) == (1, 1, 1, [])
    printed = capsys.readouterr().out
    assert (
        "done     n-1" in printed and "failed   n-2" in printed
        and "1 done, 0 changed, 1 failed, 1 pending" in printed
    )
    assert not (out / "sweep.json").exists() and starts(tmp_path) == []


def test_failed_cell_does_not_stop_the_others_and_retry(tmp_path):
    require_kernel()
    sweep_file = tiny_sweep(tmp_path, n_values=(1, 2))
    out = tmp_path / "out"
    out.mkdir()
    (out / "fail-1").touch()

    threads = followers()
    summary = run_sweep(sweep_file, overrides={"tag": "x y"}, progress=True)  # bars: a follower thread per cell
    assert followers() == threads  # each follower stopped, the failed cell's too
    assert [(c["name"], c["status"]) for c in summary["cells"]] == [("n-1", "failed"), ("n-2", "done")]
    assert summary["failed"] == 1 and summary["ran"] == ["n-1", "n-2"]
    error = json.loads((out / "n-1" / "error.json").read_text())
    assert error["message"] == "ValueError: boom in cell 1" and any("boom" in line for line in error["traceback"])
    assert (out / "n-1" / "tiny.ipynb").is_file()  # the executed notebook, with the error, for debugging
    # Declared parameters went in directly, the others (the override too) in `config`.
    record = json.loads((out / "n-2" / "record.json").read_text())
    assert record["n"] == 2 and record["config"] == {"sleep": 0.0, "tag": "x y"}
    listing = json.loads((out / "sweep.json").read_text())
    assert [(c["name"], c["status"]) for c in listing["cells"]] == [("n-1", "failed"), ("n-2", "done")]
    assert not list(out.rglob(".partial.*")) and not list(out.rglob("*.tmp"))

    # Again: nothing runs (failed cells wait for retry_failed).
    assert run_sweep(sweep_file, progress=False)["ran"] == []
    (out / "fail-1").unlink()
    summary = run_sweep(sweep_file, retry_failed=True, progress=False)
    assert summary["ran"] == ["n-1"] and summary["done"] == 2 and summary["failed"] == 0
    assert not (out / "n-1" / "error.json").exists()
    assert sorted(starts(tmp_path)) == ["n-1", "n-1", "n-2"]


@pytest.mark.parametrize("kill", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "Ctrl-C"])
def test_killed_sweep_resumes_without_lost_or_repeated_cells(tmp_path, kill):
    require_kernel()
    names = ["n-1", "n-2"]
    sweep_file = tiny_sweep(tmp_path, n_values=(1, 2), sleep=1.0)
    out = tmp_path / "out"
    process = run_in_subprocess(sweep_file)
    try:
        deadline = time.monotonic() + 120
        while cell_status(out / "n-1", "tiny.ipynb") != "done":
            assert process.poll() is None, "the sweep ended before its first cell completed"
            assert time.monotonic() < deadline, "the first cell did not complete in time"
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, kill)  # the sweep (its kernel, in a session of its own, follows its parent)
        process.wait(timeout=60)
    wait_for_kernel_end(out / "n-2")  # the interrupted cell's kernel ends with its sweep
    started_at_kill = starts(tmp_path)
    assert cell_status(out / "n-1", "tiny.ipynb") == "done" and cell_status(out / "n-2", "tiny.ipynb") == "pending"
    assert not list(out.rglob("error.json"))  # interrupted is not failed

    summary = run_sweep(sweep_file, progress=False)
    assert summary["done"] == 2 and summary["failed"] == 0 and summary["ran"] == ["n-2"]
    final = starts(tmp_path)
    # The cell done before the kill never runs again; the interrupted one runs once more.
    assert final.count("n-1") == 1 and final.count("n-2") == started_at_kill.count("n-2") + 1, (started_at_kill, final)
    for name in names:
        assert json.loads((out / name / "record.json").read_text())["n"] == int(name[-1])
    assert [c["status"] for c in json.loads((out / "sweep.json").read_text())["cells"]] == ["done"] * 2


def test_benchmark_sweep_files_are_valid(tmp_path):
    """Every committed sweep expands to valid RunConfig cells (field names and values)."""
    from agpnet.config import RunConfig

    expected = {
        "mvtec_multiclass": 1,
        "mvtec_oneclass": 15,
        "mvtec_fewshot": 9,
        "visa_multiclass": 1,
        "visa_oneclass": 12,
        "mvtec3d_multiclass": 1,
        "realiad_multiclass": 1,
        "mvtec2_multiclass": 1,
        "btad_multiclass": 1,
        "mpdd_multiclass": 1,
    }
    files = sorted((REPO / "sweeps").glob("*.yaml"))
    assert {f.stem for f in files} >= {*expected, "demo", "ablations"}
    for path in files:
        sweep = load_sweep(path, out=tmp_path, overrides={"root": "/data/set"} if path.stem != "demo" else {})
        names = [c.name for c in sweep.cells]
        assert len(set(names)) == len(names)
        for cell in sweep.cells:
            RunConfig.from_flat(cell.params)
            # Paper sweeps: pretrained weights or stop; only the offline demo may fall back to random weights.
            assert cell.params.get("weights", "hub") == ("auto" if path.stem == "demo" else "hub")
        if path.stem in expected:
            assert len(sweep.cells) == expected[path.stem], path.stem
    ablations = load_sweep(REPO / "sweeps" / "ablations.yaml", out=tmp_path)
    varied = {k for c in ablations.cells for k in c.own}
    assert varied >= {
        "noise",
        "noise_level",
        "backbone",
        "blocks",
        "ema_decoder",
        "alpha_schedule",
        "attention",
    }


def test_training_bar_follows_the_runs_progress_file(tmp_path):
    out, stop = io.StringIO(), threading.Event()
    follower = threading.Thread(target=follow_training, args=(tmp_path, "cell-a", stop, out, 0.01))
    follower.start()
    time.sleep(0.1)  # no progress.json yet: the notebook is starting
    ProgressFile(tmp_path).update(stage="train", epoch=2, epochs=3, step=8, steps=12, loss=0.5, img_s=7.25)
    time.sleep(0.2)
    ProgressFile(tmp_path).update(stage="trained", epoch=3, epochs=3, step=12, steps=12, loss=0.4, img_s=7.0)
    time.sleep(0.2)
    stop.set()
    follower.join(timeout=5)
    text = out.getvalue()
    assert not follower.is_alive()
    assert "cell-a" in text and "starting the notebook" in text
    assert "8/12" in text and "epoch 2/3, loss 0.5, 7.2 img/s" in text
    assert "12/12" in text and "evaluating" in text


def test_killed_after_the_record_before_the_notebook_runs_again(tmp_path):
    """A kill in a cell's last seconds (record.json written, papermill not finished) leaves it not done."""
    require_kernel()
    sweep_file = tiny_sweep(tmp_path, n_values=(1,))
    out = tmp_path / "out"
    process = run_in_subprocess(sweep_file, overrides={"sleep_after": 60})
    try:
        deadline = time.monotonic() + 120
        while not (out / "n-1" / "record.json").is_file():
            assert process.poll() is None and time.monotonic() < deadline, "no record.json in time"
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    assert json.loads((out / "n-1" / "record.json").read_text())["status"] == "complete"
    assert not (out / "n-1" / "tiny.ipynb").exists()
    assert run_sweep(sweep_file, dry_run=True)["pending"] == 1  # not done

    summary = run_sweep(sweep_file, progress=False)
    assert summary["ran"] == ["n-1"] and summary["done"] == 1 and starts(tmp_path) == ["n-1", "n-1"]
    assert (out / "n-1" / "tiny.ipynb").is_file() and not list(out.rglob(".partial.*"))
    assert json.loads((out / "n-1" / "record.previous.json").read_text())["config"]["sleep_after"] == 60
    assert run_sweep(sweep_file, progress=False)["ran"] == []


def test_changed_fields_refuse_before_running_or_rerun_when_asked(tmp_path, capsys):
    require_kernel()
    write_notebook(tmp_path / "cfg.ipynb", CONFIG_PARAMETERS, CONFIG_BODY)
    out = tmp_path / "out"
    sweep_file = write_yaml(tmp_path / "s.yaml", f"""
        notebook: cfg.ipynb
        out: {out}
        base: {{dataset: folder, epochs: 1, device: cpu}}
        grid: {{seed: [0, 1]}}
    """)
    ran_cells = lambda: (out / "starts.txt").read_text().split()  # noqa: E731
    listed = lambda: {c["name"]: c["params"] for c in json.loads((out / "sweep.json").read_text())["cells"]}  # noqa: E731

    assert run_sweep(sweep_file, progress=False)["done"] == 2
    # Unchanged (the notebook's own `root` default included), or changed in runtime fields only:
    # done. sweep.json lists the device the records were made with.
    assert run_sweep(sweep_file, progress=False)["ran"] == []
    assert run_sweep(sweep_file, overrides={"device": "cuda"}, progress=False)["ran"] == []
    assert listed()["seed-0"] == {"dataset": "folder", "epochs": 1, "device": "cpu", "seed": 0}

    with pytest.raises(AgpnetError) as err:
        run_sweep(sweep_file, overrides={"epochs": 3}, progress=False)
    message = str(err.value)
    assert "\n" not in message and "2 done cell(s)" in message
    assert "seed-0 (epochs 1 -> 3)" in message and "seed-1 (epochs 1 -> 3)" in message
    assert "--out" in message and "--rerun-changed" in message
    assert ran_cells() == ["seed-0", "seed-1"] and listed()["seed-1"]["epochs"] == 1  # nothing ran or changed

    summary = run_sweep(sweep_file, overrides={"epochs": 3}, dry_run=True)
    assert [c["status"] for c in summary["cells"]] == ["changed", "changed"]
    assert [c["params"]["epochs"] for c in summary["cells"]] == [1, 1]  # what made the records
    assert "changed  seed-0  epochs 1 -> 3" in capsys.readouterr().out

    summary = run_sweep(sweep_file, overrides={"epochs": 3}, rerun_changed=True, progress=False)
    assert summary["ran"] == ["seed-0", "seed-1"] and summary["done"] == 2
    for name in ("seed-0", "seed-1"):
        assert json.loads((out / name / "record.json").read_text())["config"]["train"]["epochs"] == 3
        assert json.loads((out / name / "record.previous.json").read_text())["config"]["train"]["epochs"] == 1
        assert listed()[name]["epochs"] == 3
    assert run_sweep(sweep_file, overrides={"epochs": 3}, progress=False)["ran"] == []


def test_notebook_failing_after_its_record_is_failed_not_done(tmp_path):
    require_kernel()
    sweep_file = tiny_sweep(tmp_path, n_values=(1,))
    out = tmp_path / "out"
    out.mkdir()
    (out / "fail-after-1").touch()
    assert run_sweep(sweep_file, progress=False)["failed"] == 1
    # its record is kept aside, where tables, reports and the viewer (record.json) do not see it
    assert not (out / "n-1" / "record.json").exists() and (out / "n-1" / "tiny.ipynb").is_file()
    assert json.loads((out / "n-1" / "record.failed.json").read_text())["n"] == 1
    assert run_sweep(sweep_file, progress=False)["failed"] == 1  # not done on the next start either
    (out / "fail-after-1").unlink()
    summary = run_sweep(sweep_file, retry_failed=True, progress=False)
    assert summary["ran"] == ["n-1"] and summary["done"] == 1
    assert (out / "n-1" / "record.json").is_file() and not (out / "n-1" / "record.failed.json").exists()


def test_changed_fields_ignore_runtime_settings_and_count_fields_a_record_lacks():
    """Review fixes: every runtime field (caches, evaluation batch, maps) is ignored, not only a
    hand-kept list; a field an older record does not hold is changed, not filled with today's default."""
    from agpnet.config import RunConfig
    from agpnet.sweep import changed_fields

    record = {"config": RunConfig.from_flat({"epochs": 2}).to_dict()}
    runtime = {"image_cache": "host", "eval_batch_size": 4, "cache_features": False, "save_maps": True,
               "device": "cpu", "compile": True}
    assert changed_fields({"epochs": 2, **runtime}, record, {}) == {}
    assert changed_fields({"epochs": 3}, record, {}) == {"epochs": [2, 3]}
    del record["config"]["model"]["ema_warmup"]  # written before the EMA warm-up existed
    assert changed_fields({"epochs": 2}, record, {}) == {"ema_warmup": ["not recorded", True]}


def test_out_dir_override_is_refused_before_any_folder_exists(tmp_path, capsys):
    from agpnet.cli import main

    path = tmp_path / "s.yaml"
    path.write_text(f"out: {tmp_path / 'out'}\nbase: {{dataset: mvtec, root: {tmp_path}}}\ngrid: {{seed: [0, 1]}}\n")
    assert main(["sweep", str(path), "--set", f"out_dir={tmp_path / 'elsewhere'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"agpnet: error: {path}: --set sets out_dir, but the sweep runs each cell in <out>/<cell name>; "
                   "set where runs go with the sweep's --out or `out:`")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]
