"""The Ray executor of `agpnet sweep` (`--executor ray`): each cell is one Ray task.

Without an address, a local Ray instance over this machine's CPUs and GPUs is started and shut
down at the end (one node, several GPUs); with `address` ("auto" or HOST:PORT) the sweep joins a
running cluster (`ray start --head` on one node, `ray start --address=HEAD:6379` on the others).
A process already connected to Ray (`ray.init` called before) uses that connection and keeps it.

A task runs the same papermill execution as the local executor (`agpnet.sweep.execute_cell`) into
the same cell folder, with `gpus_per_cell` of one GPU (at most 1: a cell trains on one GPU; Ray
sets CUDA_VISIBLE_DEVICES; a fraction packs several cells on one GPU) and `cpus_per_cell` CPUs,
which are also its torch threads; one node must have both. One writer: this process (the driver)
holds the sweep lock and alone writes sweep.json; a task writes only in its cell's folder: first
`placement.json` {executor, node, ip, pid, gpus, gpu_fraction, cpus, started}, then what the
notebook writes. Ray never retries a task: a cell whose worker or node died is failed (the driver
writes its error.json with the node and the reason) and runs again with --retry-failed. Ctrl-C
cancels the running tasks; their cells stay pending. Preflight: a task whose node cannot see the
output folder, the data root, the notebook or the driver's working folder fails at once with one
line naming the node and the path (the cells need a shared filesystem); relative paths are
relative to the driver's working folder.
"""

import contextlib
import json
import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path

from agpnet.atomic import write_json
from agpnet.environment import timestamp
from agpnet.errors import AgpnetError
from agpnet.sweep import FAILED, Cell, Executor, Sweep, TrainingBar, execute_cell, threads_env, write_error

PLACEMENT_NAME = "placement.json"
INSTALL_HINT = "pip install 'agpnet[ray]' (or: pip install ray)"
log = logging.getLogger(__name__)


def require_ray():
    """The ray module, or AgpnetError with how to install it."""
    try:
        import ray
    except ImportError:
        raise AgpnetError(f"--executor ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


@dataclass
class Resources:
    """What each cell's task asks Ray for."""

    gpus: float
    cpus: int


@contextlib.contextmanager
def session(executor: Executor):
    """Ray for a sweep: a local instance started, or a cluster joined (`executor.address`), and
    left at the end; a process already connected keeps its connection. Yields the Resources of a
    cell (AgpnetError when no node could ever run one)."""
    ray = require_ray()
    connected_here = not ray.is_initialized()
    if connected_here:
        _connect(ray, executor.address)
    try:
        yield _resources(ray, executor)
    finally:
        if connected_here:
            ray.shutdown()


def _connect(ray, address: str | None) -> None:
    try:
        if address is None:
            ray.init(address="local", include_dashboard=False, log_to_driver=False)  # a new instance
        else:
            ray.init(address=address, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as err:
        where = f"--address {address}" if address else "a local Ray instance"
        raise AgpnetError(f"{where}: cannot start or join Ray ({' '.join(str(err).split())[:300]})") from None


def _resources(ray, executor: Executor) -> Resources:
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    gpus = executor.gpus_per_cell
    if gpus is None:
        gpus = 1 if any(node.get("GPU", 0) >= 1 for node in nodes) else 0
    cpus = executor.cpus_per_cell or 1
    check_fits(nodes, gpus, cpus)
    return Resources(gpus=gpus, cpus=cpus)


def check_fits(nodes: list[dict], gpus: float, cpus: int) -> None:
    """AgpnetError unless one node (a `Resources` dict of `ray.nodes()`, alive) has `gpus` GPUs
    and `cpus` CPUs: a Ray task runs on one node, never on the cluster's sum."""
    for flag, key, need in (("--gpus-per-cell", "GPU", gpus), ("--cpus-per-cell", "CPU", cpus)):
        largest = max((node.get(key, 0) for node in nodes), default=0)
        if need > largest:
            raise AgpnetError(f"{flag} {need:g}: the largest Ray node has {largest:g} {key}; "
                              "no cell could ever start")
    if not any(node.get("GPU", 0) >= gpus and node.get("CPU", 0) >= cpus for node in nodes):
        raise AgpnetError(f"--gpus-per-cell {gpus:g} --cpus-per-cell {cpus}: no Ray node has both; "
                          "no cell could ever start")


def run_cells(sweep: Sweep, cells: list[Cell], declared: dict, finished, progress: bool = True, *,
              resources: Resources, poll_s: float = 1.0) -> None:
    """Run `cells` as Ray tasks (inside `session`); `finished(cell, status)` is called in this
    process as each ends. Ctrl-C cancels the running tasks (their cells stay pending) and is
    raised again."""
    import ray

    task = ray.remote(_cell_task).options(num_cpus=resources.cpus, num_gpus=resources.gpus, max_retries=0,
                                          retry_exceptions=False)
    limit = sweep.executor.max_concurrent or max(len(cells), 1)
    cwd = os.getcwd()
    queue, running, bars = list(cells), {}, {}
    cluster = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")}
    log.info("ray: %d cells, %g GPU and %d CPU each, at most %d at once; cluster %s", len(cells),
             resources.gpus, resources.cpus, limit, cluster)
    try:
        while queue or running:
            while queue and len(running) < limit:
                cell = queue.pop(0)
                (sweep.out / cell.name / PLACEMENT_NAME).unlink(missing_ok=True)  # an earlier attempt's
                ref = task.remote(str(sweep.notebook), str(sweep.out), cell, declared, cwd, resources.gpus,
                                  resources.cpus)
                running[ref] = cell
            ready, _ = ray.wait(list(running), num_returns=1, timeout=poll_s)
            for ref in ready:
                cell = running.pop(ref)
                if cell.name in bars:
                    bars.pop(cell.name).close()
                finished(cell, _outcome(ray, ref, sweep, cell))
            for cell in running.values() if progress else ():
                where = _where(sweep.out / cell.name)  # "" until the task has started
                if where and cell.name not in bars:
                    bars[cell.name] = TrainingBar(cell.name, position=_free_position(bars))
                if cell.name in bars:
                    bars[cell.name].show(sweep.out / cell.name, where)
    except BaseException:  # interrupted or broken: no task may go on writing; cancelled cells stay pending
        _cancel(ray, list(running))
        raise
    finally:
        for bar in bars.values():
            bar.close()


def _free_position(bars: dict) -> int:
    taken = {abs(bar.bar.pos) for bar in bars.values()}
    return next(p for p in range(1, len(bars) + 2) if p not in taken)


def _cancel(ray, refs: list) -> None:
    """Stop the running tasks (their workers are killed) and wait a little for them to end."""
    try:
        for ref in refs:
            ray.cancel(ref, force=True)
        ray.wait(refs, num_returns=len(refs), timeout=10)
    except Exception as err:  # Ctrl-C may have reached Ray's own processes too
        log.warning("ray: cancelling the running cells: %s", err)


def _outcome(ray, ref, sweep: Sweep, cell: Cell) -> str:
    """The cell's status from its task's result; error.json for a task that died or failed early."""
    cell_dir = sweep.out / cell.name
    final = cell_dir / sweep.notebook.name
    try:
        result = ray.get(ref)
    except ray.exceptions.RayError as err:  # the worker or its node died, or the task itself raised
        place = _placement(cell_dir)
        node = place.get("node")
        where = f"on node {node} ({place.get('ip')})" if node else "(node unknown: before the cell started)"
        reason = " ".join(str(err).split())[:500]
        cell_dir.mkdir(parents=True, exist_ok=True)
        write_error(cell_dir, cell, final,
                    f"the Ray worker {where} died or failed: {type(err).__name__}: {reason}",
                    str(err).splitlines(),
                    {"executor": "ray", "node": node, "ip": place.get("ip"), "reason": type(err).__name__})
        return FAILED
    if result.get("preflight"):  # the node could not see a path: the task wrote nothing
        cell_dir.mkdir(parents=True, exist_ok=True)
        write_error(cell_dir, cell, final, result["preflight"], [],
                    {"executor": "ray", "node": result["node"], "ip": result["ip"], "reason": "preflight"})
        return FAILED
    return result["status"]


def _placement(cell_dir: Path) -> dict:
    """The cell's placement.json ({} when there is none (yet) or it cannot be read)."""
    try:
        value = json.loads((cell_dir / PLACEMENT_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _where(cell_dir: Path) -> str:
    place = _placement(cell_dir)
    if not place:
        return ""
    gpus = place.get("gpus") or []
    return str(place.get("node", "?")) + (f", GPU {','.join(map(str, gpus))}" if gpus else ", CPU")


def _cell_task(notebook: str, out: str, cell: Cell, declared: dict, cwd: str, gpus: float, cpus: int) -> dict:
    """One cell on a Ray worker: preflight, placement.json, then agpnet.sweep.execute_cell."""
    import ray

    node, ip = platform.node(), ray.util.get_node_ip_address()
    root = cell.params.get("root")
    paths = [("working folder", Path(cwd)), ("output folder", Path(out)), ("notebook", Path(notebook))]
    if isinstance(root, str):
        paths.append(("data root", Path(cwd) / root))
    for what, path in paths:
        if not path.exists():
            return {"status": FAILED, "node": node, "ip": ip,
                    "preflight": f"node {node} ({ip}) cannot see the {what} {path}: "
                                 "every node that runs a cell must see the output folder, the data root "
                                 "and the notebook (a shared filesystem)"}
    os.chdir(cwd)
    cell_dir = Path(out) / cell.name
    gpu_ids = [str(i) for i in ray.get_gpu_ids()]
    place = {"executor": "ray", "node": node, "ip": ip, "pid": os.getpid(), "gpus": gpu_ids,
             "gpu_fraction": gpus, "cpus": cpus, "started": timestamp()}
    env = {"AGPNET_EXECUTOR": "ray", "AGPNET_GPU_FRACTION": str(gpus), **threads_env(cpus)}
    status = execute_cell(Path(notebook), cell_dir, cell, declared, env=env,
                          error_fields={"executor": "ray", "node": node, "ip": ip},
                          on_start=lambda: write_json(cell_dir / PLACEMENT_NAME, place))
    return {"status": status, "node": node, "ip": ip}
