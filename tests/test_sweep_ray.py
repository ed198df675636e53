"""The Ray executor of sweeps (agpnet.sweep_ray) on one local Ray instance (2 CPUs, loopback only),
shared by this module and shut down at its end; plus the executor's settings and Ray missing."""

import json
import os
import platform
import signal
import subprocess
import sys
import textwrap
import threading
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from conftest import TINY_MODEL
from fixtures_runs import REPO, require_kernel, write_notebook
from test_sweep import alive, wait_for

from agpnet.cli import main
from agpnet.errors import AgpnetError
from agpnet.sweep import cell_status, load_sweep, run_sweep

# A tiny notebook: logs each start to <out>/starts.txt and its kernel's pid to <cell>/kernel.pid,
# waits while <out>/hold-<n> exists, then writes a record.
PARAMETERS = 'out_dir = ""\nn = 0\nconfig = {}'
BODY = textwrap.dedent("""
    import os, time
    from pathlib import Path
    from agpnet.atomic import write_json
    out = Path(out_dir)
    with open(out.parent / "starts.txt", "a") as f:
        f.write(out.name + "\\n")
    (out / "kernel.pid").write_text(str(os.getpid()))
    waited = time.monotonic()
    while (out.parent / f"hold-{n}").exists() and time.monotonic() - waited < 60:
        time.sleep(0.05)
    time.sleep(config.get("sleep", 0))
    write_json(out / "record.json", {"status": "complete", "n": n, "config": config})
""")
RAY_PROCESSES = ("raylet", "gcs_server", "ray::")


def ray_processes() -> set[int]:
    found = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=True).stdout
    return {int(line.split()[0]) for line in found.splitlines() if any(p in line for p in RAY_PROCESSES)}


@pytest.fixture(scope="module")
def ray_address():
    """One local Ray instance for the module (2 CPUs, loopback only); no process left afterwards."""
    require_kernel()
    patch = pytest.MonkeyPatch()
    patch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # before ray is imported: bind to 127.0.0.1
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")
    before = ray_processes()
    context = ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        assert {node["NodeManagerAddress"] for node in ray.nodes()} == {"127.0.0.1"}
        yield context.address_info["gcs_address"]
    finally:
        ray.shutdown()
        patch.undo()
    wait_for(lambda: not ray_processes() - before, "Ray's processes ended", timeout_s=30)


def tiny_sweep(tmp_path: Path, n_values=(1, 2), **base) -> Path:
    write_notebook(tmp_path / "tiny.ipynb", PARAMETERS, BODY)
    sweep_file = tmp_path / "tiny.yaml"
    sweep_file.write_text(yaml.safe_dump({"notebook": "tiny.ipynb", "out": str(tmp_path / "out"), "base": base,
                                          "grid": {"n": list(n_values)}}))
    return sweep_file


def starts(tmp_path: Path) -> list[str]:
    log = tmp_path / "out" / "starts.txt"
    return log.read_text().split() if log.exists() else []


RAY = {"kind": "ray", "cpus_per_cell": 1}


def test_ray_writes_the_same_records_as_local_and_runs_cells_at_once(ray_address, tmp_path, synth_root):
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "base": {"dataset": "mvtec", "root": str(synth_root), "epochs": 1, "batch_size": 4, "weights": "random",
                 "device": "cpu", **TINY_MODEL},
        "grid": {"seed": [0, 1], "noise": ["attention", "none"]},
    }))
    # The local executor (the command line, in a process of its own) at the same time as Ray.
    local = subprocess.Popen([sys.executable, "-m", "agpnet", "sweep", str(sweep_file), "--out", str(tmp_path / "local"),
                              "--cpus-per-cell", "1"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    on_ray = run_sweep(sweep_file, out=tmp_path / "ray", executor=RAY, progress=True)
    assert local.wait(timeout=300) == 0, local.stderr.read()
    assert on_ray["done"] == 4, on_ray

    intervals = []
    for cell in on_ray["cells"]:
        mine = json.loads((Path(cell["dir"]) / "record.json").read_text())
        theirs = json.loads((tmp_path / "local" / cell["name"] / "record.json").read_text())
        assert mine["metrics"] == theirs["metrics"] and mine["loss_per_epoch"] == theirs["loss_per_epoch"]
        assert {**mine["config"], "out_dir": None} == {**theirs["config"], "out_dir": None}
        env = mine["environment"]
        assert (env["executor"], env["hostname"], env["gpu_fraction"], env["torch_threads"]) == (
            "ray", platform.node(), 0.0, 1)
        assert theirs["environment"]["executor"] == "local" and theirs["environment"]["torch_threads"] == 1
        executed = json.loads((Path(cell["dir"]) / "train_eval.ipynb").read_text())["metadata"]["papermill"]
        intervals.append((datetime.fromisoformat(executed["start_time"]), datetime.fromisoformat(executed["end_time"])))
    # Two cells at once (2 CPUs, 1 per cell): the notebooks' recorded execution times overlap.
    assert any(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(intervals) for b in intervals[i + 1:]), intervals
    listing = json.loads((tmp_path / "ray" / "sweep.json").read_text())
    assert listing["executor"]["kind"] == "ray" and {c["status"] for c in listing["cells"]} == {"done"}


@pytest.mark.parametrize("kill", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "Ctrl-C"])
def test_driver_stopped_mid_sweep_then_only_unfinished_cells_run(ray_address, tmp_path, kill):
    sweep_file = tiny_sweep(tmp_path, n_values=(1, 2, 3))
    out = tmp_path / "out"
    (out / "hold-2").parent.mkdir(parents=True)
    (out / "hold-2").touch()  # cell 2 runs until the driver is stopped
    executor = {**RAY, "address": ray_address, "max_concurrent": 1}
    code = f"import sys; from agpnet.sweep import run_sweep; run_sweep(sys.argv[1], progress=False, executor={executor!r})"
    driver = subprocess.Popen([sys.executable, "-c", code, str(sweep_file)], cwd=REPO, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (out / "n-2" / "kernel.pid").is_file() or driver.poll() is not None, "cell 2 started")
        assert driver.poll() is None, "the driver ended early"
        worker = json.loads((out / "n-2" / "placement.json").read_text())["pid"]
        kernel = int((out / "n-2" / "kernel.pid").read_text())
    finally:
        os.kill(driver.pid, kill)
        driver.wait(timeout=60)
    # The running cell's task is stopped with its driver: it cannot go on beside a new sweep.
    wait_for(lambda: not alive(worker) and not alive(kernel), "the stopped driver's worker and kernel ended", 30)
    (out / "hold-2").unlink()
    assert [cell_status(out / f"n-{n}", "tiny.ipynb") for n in (1, 2, 3)] == ["done", "pending", "pending"]
    assert not list(out.rglob("error.json"))  # stopped is not failed

    summary = run_sweep(sweep_file, executor=RAY, progress=False)
    assert summary["ran"] == ["n-2", "n-3"] and summary["done"] == 3
    assert starts(tmp_path) == ["n-1", "n-2", "n-2", "n-3"]


def test_killed_worker_leaves_its_cell_failed_then_retry_failed_completes_it(ray_address, tmp_path):
    sweep_file = tiny_sweep(tmp_path, n_values=(1,))
    out = tmp_path / "out"
    out.mkdir()
    (out / "hold-1").touch()
    result = {}
    sweep = threading.Thread(target=lambda: result.update(run_sweep(sweep_file, executor=RAY, progress=False)))
    sweep.start()
    try:
        wait_for(lambda: (out / "n-1" / "kernel.pid").is_file(), "the cell started")
        worker = json.loads((out / "n-1" / "placement.json").read_text())["pid"]
        kernel = int((out / "n-1" / "kernel.pid").read_text())
        os.kill(worker, signal.SIGKILL)
    finally:
        sweep.join(timeout=120)
    assert not sweep.is_alive() and result["failed"] == 1 and result["done"] == 0
    wait_for(lambda: not alive(kernel), "the dead worker's kernel ended", 30)
    error = json.loads((out / "n-1" / "error.json").read_text())
    assert error["node"] == platform.node() and error["reason"] == "WorkerCrashedError"
    assert f"node {platform.node()}" in error["message"] and "\n" not in error["message"]
    assert cell_status(out / "n-1", "tiny.ipynb") == "failed"

    (out / "hold-1").unlink()
    assert run_sweep(sweep_file, executor=RAY, progress=False)["ran"] == []  # failed waits for --retry-failed
    summary = run_sweep(sweep_file, executor=RAY, retry_failed=True, progress=False)
    assert summary["ran"] == ["n-1"] and summary["done"] == 1 and not (out / "n-1" / "error.json").exists()


def test_a_node_that_cannot_see_the_data_root_fails_the_cell_at_once(ray_address, tmp_path, caplog):
    missing = tmp_path / "no-such-data"
    sweep_file = tiny_sweep(tmp_path, n_values=(1,), root=str(missing))
    summary = run_sweep(sweep_file, executor=RAY, progress=False)
    assert summary["failed"] == 1 and starts(tmp_path) == []  # the notebook never started
    message = json.loads((tmp_path / "out" / "n-1" / "error.json").read_text())["message"]
    assert message.startswith(f"node {platform.node()} (127.0.0.1) cannot see the data root {missing}")
    assert "shared filesystem" in message and "\n" not in message
    assert message in caplog.text


def test_a_cell_no_node_could_run_is_one_line_before_the_output_folder(ray_address, tmp_path):
    sweep_file = tiny_sweep(tmp_path, n_values=(1,))
    with pytest.raises(AgpnetError, match=r"^--gpus-per-cell 1: the largest Ray node has 0 GPU; no cell could ever start$"):
        run_sweep(sweep_file, executor={**RAY, "gpus_per_cell": 1}, progress=False)
    assert not (tmp_path / "out").exists()


# Two nodes of 1 CPU each (2 in all), started here; `agpnet sweep --cpus-per-cell 2` joins them
# in a process of its own, killed after 20 s so that the cluster is shut down even when it hangs.
TWO_NODES = textwrap.dedent("""
    import subprocess, sys
    from ray.cluster_utils import Cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        print("nodes", [node.node_ip_address for node in (cluster.head_node, *cluster.worker_nodes)])
        sweep = [sys.executable, "-m", "agpnet", "sweep", sys.argv[1], "--executor", "ray",
                 "--address", cluster.address, "--cpus-per-cell", "2"]
        try:
            done = subprocess.run(sweep, capture_output=True, text=True, timeout=20)
            print("exit", done.returncode, [line for line in done.stderr.splitlines() if "agpnet" in line])
        except subprocess.TimeoutExpired:
            print("hung")
    finally:
        cluster.shutdown()
""")


def test_a_cell_larger_than_every_node_is_refused_on_a_two_node_cluster(tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")
    sweep_file = tiny_sweep(tmp_path, n_values=(1,))
    servers = {"raylet", "gcs_server"}  # each node's own; the workers end with their raylet
    before = {pid for pid in ray_processes() if _name(pid) in servers}
    done = subprocess.run([sys.executable, "-c", TWO_NODES, str(sweep_file)], cwd=REPO, capture_output=True,
                          text=True, timeout=90, env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
    assert done.stdout.startswith("nodes ['127.0.0.1', '127.0.0.1']\n"), done.stdout + done.stderr
    # One line at once (exit 2), not a sweep waiting forever for a node that does not exist.
    message = "agpnet: error: --cpus-per-cell 2: the largest Ray node has 1 CPU; no cell could ever start"
    assert done.stdout.splitlines()[1] == f"exit 2 [{message!r}]", done.stdout + done.stderr
    assert not (tmp_path / "out").exists()
    wait_for(lambda: not {pid for pid in ray_processes() if _name(pid) in servers} - before,
             "the two-node cluster's processes ended", timeout_s=30)


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


@pytest.mark.parametrize("nodes, gpus, cpus, expected", [
    ([{"GPU": 1.0, "CPU": 8.0}, {"GPU": 1.0, "CPU": 8.0}], 1, 8, None),
    ([{"GPU": 1.0, "CPU": 8.0}, {"CPU": 2.0}], 0.25, 8, None),
    ([{"GPU": 1.0, "CPU": 1.0}, {"GPU": 1.0, "CPU": 1.0}], 0, 2, "--cpus-per-cell 2: the largest Ray node has 1 CPU"),
    ([{"GPU": 0.5, "CPU": 4.0}, {"GPU": 0.5, "CPU": 4.0}], 1, 1, "--gpus-per-cell 1: the largest Ray node has 0.5 GPU"),
    ([{"GPU": 1.0, "CPU": 1.0}, {"CPU": 8.0}], 1, 4, "--gpus-per-cell 1 --cpus-per-cell 4: no Ray node has both"),
    ([], 0, 1, "--cpus-per-cell 1: the largest Ray node has 0 CPU"),
])
def test_a_cell_must_fit_on_one_node_not_on_the_clusters_sum(nodes, gpus, cpus, expected):
    from agpnet.sweep_ray import check_fits

    if expected is None:
        check_fits(nodes, gpus, cpus)
    else:
        with pytest.raises(AgpnetError, match=f"^{expected}; no cell could ever start$"):
            check_fits(nodes, gpus, cpus)


def test_executor_without_ray_installed_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    sweep_file = tiny_sweep(tmp_path, n_values=(1,))
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if not installed
    assert main(["sweep", str(sweep_file), "--executor", "ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "needs Ray" in err and "pip install 'agpnet[ray]'" in err
    assert not (tmp_path / "out").exists()


def test_executor_from_the_sweep_file_and_flags(tmp_path):
    sweep_file = tiny_sweep(tmp_path)
    text = sweep_file.read_text() + "executor: {kind: ray, gpus_per_cell: 0.25, cpus_per_cell: 4}\n"
    sweep_file.write_text(text)
    executor = load_sweep(sweep_file).executor
    assert (executor.kind, executor.gpus_per_cell, executor.cpus_per_cell, executor.max_concurrent) == (
        "ray", 0.25, 4, None)
    executor = load_sweep(sweep_file, executor={"max_concurrent": 8, "cpus_per_cell": 2}).executor
    assert (executor.kind, executor.gpus_per_cell, executor.cpus_per_cell, executor.max_concurrent) == (
        "ray", 0.25, 2, 8)
    # Another executor on the command line drops the file's section.
    assert load_sweep(sweep_file, executor={"kind": "local"}).executor.gpus_per_cell is None

    for given, expected in [({"kind": "slurm"}, "--executor: got 'slurm'; expected local or ray"),
                            ({"gpus_per_cell": 1.5}, "--gpus-per-cell: got 1.5"),
                            # a cell trains on one GPU (cuda:0): a second GPU would be held, unused
                            ({"gpus_per_cell": 2}, "--gpus-per-cell: got 2; expected a number from 0 to 1 (a cell "
                                                   "trains on one GPU"),
                            ({"cpus_per_cell": 0}, "--cpus-per-cell: got 0; expected a whole number >= 1"),
                            ({"kind": "local", "address": "auto"}, "--address: only for the ray executor")]:
        with pytest.raises(AgpnetError, match=expected.replace("(", r"\(")):
            load_sweep(sweep_file, executor=given)
    sweep_file.write_text(text.replace("cpus_per_cell: 4", "cpus: 4"))
    with pytest.raises(AgpnetError, match="executor: unknown key"):
        load_sweep(sweep_file)


def test_the_record_and_the_report_say_where_a_cell_ran(monkeypatch):
    from agpnet.environment import _physical_gpu_index, describe_environment
    from agpnet.report import _environment_html

    monkeypatch.setenv("AGPNET_EXECUTOR", "ray")
    monkeypatch.setenv("AGPNET_GPU_FRACTION", "0.25")
    env = describe_environment(None)
    assert (env["executor"], env["gpu_fraction"], env["hostname"], env["gpu_index"]) == (
        "ray", 0.25, platform.node(), None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")  # as Ray sets it: torch's cuda:1 is the machine's GPU 5
    assert _physical_gpu_index(1) == "5"
    html = _environment_html([{"environment": {**env, "device": "cuda:0", "gpu": "NVIDIA H200", "gpu_index": "5"}}])
    assert f"host {platform.node()}, ray executor, GPU index 5 (0.25 of it)" in html and "NVIDIA H200" in html
