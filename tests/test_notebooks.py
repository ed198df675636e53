"""Every notebook executes under papermill with tiny parameters, on a real (tiny) run.

train_eval runs through `run_sweep` (a one-cell sweep), so the parameter routing into
RunConfig is checked too. aggregate and ablations are executed by tests/test_report.py.
"""

import json

import nbformat
import papermill
import pytest
import yaml
from fixtures_runs import REPO, require_kernel

from agpnet import tables
from agpnet.records import load_records


def outputs(path) -> list[dict]:
    nb = nbformat.read(path, as_version=4)
    return [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]


def mime_types(path) -> list[str]:
    return [m for o in outputs(path) for m in o.get("data", {})]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A multi-class run on a tiny synthetic dataset, made by the train_eval notebook via a sweep."""
    require_kernel()
    from conftest import TINY_MODEL

    from agpnet.data.synth import write_synthetic_dataset
    from agpnet.sweep import run_sweep

    base = tmp_path_factory.mktemp("notebooks")
    root = write_synthetic_dataset(base / "synth", seed=0, image_size=64, n_train=2, n_test=4)
    sweep_file = base / "tiny.yaml"
    sweep_file.write_text(
        yaml.safe_dump(
            {
                "out": str(base / "runs"),
                "base": {
                    "dataset": "mvtec",
                    "root": str(root),
                    "epochs": 1,
                    "batch_size": 4,
                    "weights": "random",
                    "device": "cpu",
                    "save_maps": True,
                    "maps_size": 32,
                    **TINY_MODEL,
                },
                "grid": {"setting": ["multi-class"]},
            }
        )
    )
    summary = run_sweep(sweep_file, progress=False)
    (cell,) = summary["cells"]
    if cell["status"] != "done":
        error = json.loads((base / "runs" / cell["name"] / "error.json").read_text())
        pytest.fail(f"train_eval.ipynb failed: {error['message']}\n" + "\n".join(error["traceback"]))
    return base / "runs" / cell["name"]


def test_train_eval_writes_the_run_and_shows_its_results(tiny_run):
    record = json.loads((tiny_run / "record.json").read_text())
    assert record["status"] == "complete" and record["config"]["train"]["epochs"] == 1
    assert (
        record["config"]["model"]["backbone"] == "vit_tiny_patch16_224"
        and record["weights"]["pretrained"] is False
    )
    assert (tiny_run / "maps.npz").is_file() and (tiny_run / "checkpoint.pt").is_file()
    executed = tiny_run / "train_eval.ipynb"
    types = mime_types(executed)
    assert types.count("image/png") >= 2  # loss curve and heatmaps
    assert "text/html" in types  # the metrics table
    assert any(
        "RANDOM" in "".join(o.get("text", "")) or "random" in "".join(o.get("text", ""))
        for o in outputs(executed)
    )  # the weights warning is visible
    # The real record fits the tables.
    (table,) = tables.paper_tables(load_records(tiny_run.parent))
    assert list(table.frame["category"][table.frame["method"] == "AGPNet (ours)"]) == [
        *record["categories"],
        "mean",
    ]
    ours = table.frame[table.frame["method"] == "AGPNet (ours)"]
    assert ours.iloc[-1]["I-AUROC"] == f"{100 * record['metrics']['mean']['image_auroc']:.1f}"


def test_attention_masks_notebook(tiny_run, tmp_path):
    executed = tmp_path / "attention_masks.ipynb"
    papermill.execute_notebook(
        str(REPO / "notebooks/attention_masks.ipynb"),
        str(executed),
        kernel_name="python3",
        progress_bar=False,
        parameters={
            "runs_dir": str(tiny_run.parent),
            "run": tiny_run.name,
            "out_dir": str(tmp_path / "out"),
            "n_images": 2,
            "progresses": [0.0, 1.0],
            "device": "cpu",
        },
    )
    assert mime_types(executed).count("image/png") == 2  # one figure per image, rows = training stages
    text = "".join("".join(o.get("text", "")) for o in outputs(executed))
    assert str(tiny_run.parent) in text and f"run: {tiny_run.name}" in text  # the folder used, the run picked
    assert len(list((tmp_path / "out" / "attention_masks").glob("*.png"))) == 2  # out_dir: the figures as files


def test_viewer_notebook(tiny_run, tmp_path):
    executed = tmp_path / "viewer.ipynb"
    papermill.execute_notebook(
        str(REPO / "notebooks/viewer.ipynb"),
        str(executed),
        kernel_name="python3",
        progress_bar=False,
        parameters={"runs_dir": str(tiny_run.parent)},  # a sweep folder: its runs are listed
    )
    assert "application/vnd.jupyter.widget-view+json" in mime_types(executed)
    assert any("re-run this cell" in "".join(o.get("data", {}).get("text/plain", "")) for o in outputs(executed))


def test_committed_notebooks_have_no_outputs_and_a_parameters_cell():
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), path.name
        assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1, path.name
        parameters = papermill.inspect_notebook(str(path))
        assert set(parameters) >= ({"out_dir"} if path.stem == "train_eval" else {"runs_dir", "out_dir"})
        if "runs_dir" in parameters:  # found from the repository root and from notebooks/ (agpnet.runfinder)
            assert parameters["runs_dir"]["default"] == '"runs"', path.name
