"""A regular (not editable) install of the wheel runs sweeps and builds reports: the notebooks and
sweep files ship inside the package. The wheel is installed into a throwaway folder put first on
the path, and the commands run outside the repository, so nothing can come from the checkout."""

import os
import subprocess
import sys
from pathlib import Path

from fixtures_runs import write_run

REPO = Path(__file__).resolve().parents[1]


def run(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_wheel_install_runs_a_sweep_and_a_report(tmp_path):
    built = run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                 str(tmp_path / "wheel"), str(REPO)], tmp_path, dict(os.environ))
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "wheel").glob("agpnet-*.whl")
    site = tmp_path / "site"
    installed = run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site),
                     str(wheel)], tmp_path, dict(os.environ))
    assert installed.returncode == 0, installed.stderr
    env = {**os.environ, "PYTHONPATH": str(site)}
    work = tmp_path / "work"
    work.mkdir()

    where = run([sys.executable, "-c", "import agpnet.sweep as s; print(s.__file__, s.NOTEBOOKS_DIR)"], work, env)
    assert where.stdout.startswith(str(site)), where.stdout + where.stderr

    sweep = run([sys.executable, "-m", "agpnet", "sweep", "demo", "--dry-run", "--out", str(work / "out")], work,
                env)
    assert sweep.returncode == 0, sweep.stderr
    assert f"(notebook {site}" in sweep.stdout and "0 done, 0 changed, 0 failed, 5 pending" in sweep.stdout

    write_run(work / "runs" / "a", categories=("bottle",))
    report = run([sys.executable, "-m", "agpnet", "report", str(work / "runs"), "--out", str(work / "report")],
                 work, env)
    assert report.returncode == 0, report.stderr
    assert (work / "report" / "index.html").is_file()
