"""Run records: one builder, and loading that names the file and the field a record lacks."""

import json
import subprocess
import sys

import pytest
from fixtures_runs import REPO, write_run

from agpnet import tables
from agpnet.errors import AgpnetError
from agpnet.metrics import MAD_KEYS, METRICS
from agpnet.records import FORMAT, flat_config, load_record, load_records


def rewrite(run_dir, change) -> None:
    record = json.loads((run_dir / "record.json").read_text())
    change(record)
    (run_dir / "record.json").write_text(json.dumps(record))


def test_a_built_record_loads_as_written(tmp_path):
    record = write_run(tmp_path / "a", seed=3, setting="few-shot", shots=2, model={"noise": "none"})
    loaded = load_record(tmp_path / "a" / "record.json")
    assert loaded == {**record, "run_dir": str(tmp_path / "a")}
    assert loaded["format"] == FORMAT and loaded["status"] == "complete"
    flat = flat_config(loaded)
    assert (flat["dataset"], flat["setting"], flat["seed"], flat["shots"], flat["noise"]) == (
        "mvtec", "few-shot", 3, 2, "none")


def test_records_written_before_the_format_field_still_load(tmp_path):
    write_run(tmp_path / "old")
    rewrite(tmp_path / "old", lambda r: r.pop("format"))
    (loaded,) = load_records(tmp_path)
    assert "format" not in loaded and loaded["seed"] == 0


@pytest.mark.parametrize(("field", "change"), [
    ("seed", lambda r: r.pop("seed")),
    ("config.model", lambda r: r["config"].pop("model")),
    ("metrics.cable.aupro", lambda r: r["metrics"]["cable"].pop("aupro")),  # before: shown as "NaN" (undefined)
])
def test_an_older_record_names_the_file_and_the_field(tmp_path, field, change):
    write_run(tmp_path / "runs/new")
    write_run(tmp_path / "runs/old")
    rewrite(tmp_path / "runs/old", change)
    path = tmp_path / "runs/old/record.json"
    for load in (lambda: load_records(tmp_path / "runs"), lambda: load_record(path)):
        with pytest.raises(AgpnetError) as err:
            load()
        message = str(err.value)
        assert message.startswith(f"{path}: ") and f"`{field}`" in message and "\n" not in message


def test_wrong_types_other_formats_and_unfinished_runs_are_named(tmp_path):
    write_run(tmp_path / "a")
    path = tmp_path / "a/record.json"
    rewrite(tmp_path / "a", lambda r: r.update(seed="0"))
    with pytest.raises(AgpnetError, match=r"`seed` is a string; expected an integer"):
        load_record(path)
    rewrite(tmp_path / "a", lambda r: r.update(seed=0, format="agpnet-record-9"))
    with pytest.raises(AgpnetError, match="format 'agpnet-record-9'"):
        load_records(tmp_path)
    rewrite(tmp_path / "a", lambda r: r.update(format=FORMAT, status="running"))
    assert load_records(tmp_path) == []  # an unfinished run is left out of a folder ...
    with pytest.raises(AgpnetError, match="status 'running'"):
        load_record(path)  # ... and refused when asked for by name
    path.write_text("[1, 2]")
    with pytest.raises(AgpnetError, match="expected a JSON object"):
        load_records(tmp_path)


def test_the_viewer_reads_records_through_the_same_check(tmp_path):
    from agpnet.viewer import load_run

    write_run(tmp_path / "a")
    rewrite(tmp_path / "a", lambda r: r.pop("weights"))
    with pytest.raises(AgpnetError, match="without `weights`"):
        load_run(tmp_path / "a")


def test_tables_follow_the_metric_registry():
    assert list(tables.COLUMNS) == list(METRICS) and list(tables.COLUMNS.values()) == [
        m.label for m in METRICS.values()]
    assert len(MAD_KEYS) == 7 and set(MAD_KEYS) < set(METRICS) and "mad" in METRICS
    assert all(m.higher_is_better for m in METRICS.values())


def test_records_tables_and_reports_do_not_import_torch():
    code = ("import sys, agpnet.records, agpnet.tables, agpnet.report, agpnet.plots, agpnet.metrics; "
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
