"""The HTML report: pages from the executed notebooks, index, table exports, escaping, failures."""

import datetime
import html
import json
import re
import shutil
from pathlib import Path

import pytest
from fixtures_runs import EVIL_CATEGORY, demo_report, require_kernel, write_run

from agpnet import tables
from agpnet.atomic import write_text
from agpnet.errors import AgpnetError
from agpnet.records import load_records
from agpnet.report import PAGES, build_report


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    return demo_report(tmp_path_factory)


def test_report_files_and_index(report):
    runs, out, index = report
    assert index == out / "index.html"
    text = index.read_text()
    for name in PAGES:
        assert f'href="{name}.html"' in text and (out / f"{name}.html").is_file()
        assert (out / "notebooks" / f"{name}.ipynb").is_file()  # the executed notebooks, kept
    exports = sorted(p.name for p in (out / "tables").iterdir())
    assert exports == [f"mvtec_{s}.{e}" for s in ("multi-class", "one-class") for e in ("csv", "md", "tex")]
    for name in exports:
        assert f'href="tables/{name}"' in text
    # Weights: a red banner quoting the warning of the runs that were not pretrained.
    assert 'class="banner"' in text and "2 of 7 run(s)" in text
    assert html.escape("backbone weights are random: numbers are not meaningful") in text
    # Machine, versions, date.
    assert "Linux x86_64, 2 CPUs" in text and re.search(r"torch [0-9]", text) and "papermill" in text
    assert "agpnet 0.1.0 (commit 0123456789abcdef0123456789abcdef01234567)" in text
    assert str(datetime.date.today().year) in text
    assert not [p for p in out.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]


def test_report_pages_hold_the_tables_and_figures(report):
    runs, out, _ = report
    aggregate = (out / "aggregate.html").read_text()
    for table in tables.paper_tables(load_records(runs)):
        for value in table.frame[table.frame["category"] == "mean"]["I-AUROC"]:
            assert f">{value}<" in aggregate
    assert (
        "ViTAD (published)" in aggregate
        and "AGPNet (ours; noise=attention, weights=hub, 2 seeds)" in aggregate
    )
    assert aggregate.count("<table") >= 1 and "import agpnet" not in aggregate  # outputs only, no code
    ablations = (out / "ablations.html").read_text()
    assert "mvtec multi-class: noise" in ablations and 'src="data:image/png;base64,' in ablations
    assert "No run with maps.npz and checkpoint.pt" in (out / "attention_masks.html").read_text()
    for name in ["index", *PAGES]:
        page = (out / f"{name}.html").read_text()
        assert not re.search(r"<script[^>]+src=", page), f"{name}.html loads a script"  # self-contained
        assert not re.search(r'<img[^>]+src="(?!data:)', page), f"{name}.html links an image file"


def test_text_from_the_data_is_escaped(report):
    _, out, _ = report
    escaped = html.escape(EVIL_CATEGORY)
    for name in ("index", "aggregate"):
        page = (out / f"{name}.html").read_text()
        assert EVIL_CATEGORY not in page and "<script>alert" not in page
        assert escaped in page
    assert EVIL_CATEGORY in (out / "tables" / "mvtec_one-class.csv").read_text()  # data files keep the text


def test_failing_notebook_is_named(tmp_path):
    require_kernel()
    record = write_run(tmp_path / "runs/bad")
    record["metrics"]["bottle"]["image_auroc"] = "not a number"
    (tmp_path / "runs/bad/record.json").write_text(json.dumps(record))
    with pytest.raises(AgpnetError) as err:
        build_report(tmp_path / "runs", tmp_path / "report")
    message = str(err.value)
    assert message.startswith("aggregate.ipynb: cell ") and "ValueError" in message and "\n" not in message
    failed = tmp_path / "report.failed-aggregate.ipynb"  # the executed notebook, kept beside the report
    assert message.endswith(f"(executed notebook: {failed})") and failed.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [failed.name, "runs"]  # no report, no staging folder


def test_no_runs(tmp_path):
    (tmp_path / "runs").mkdir()
    with pytest.raises(AgpnetError, match="no complete run found"):
        build_report(tmp_path / "runs", tmp_path / "report")


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _stand_in_pages(monkeypatch, failing: str | None = None) -> None:
    """Pages without papermill: aggregate writes a table like the real notebook; `failing` raises."""
    def render(notebook, executed_dir, parameters, failed_copy=None):
        if notebook.stem == failing:
            raise AgpnetError(f"{notebook.name}: cell 2 failed: FileNotFoundError: data root moved")
        if notebook.stem == "aggregate":
            write_text(Path(parameters["out_dir"]) / "tables" / "new.csv", "new\n")
        return f"<p>new {notebook.stem}</p>"

    monkeypatch.setattr("agpnet.report.render_notebook", render)


def test_a_failed_rebuild_leaves_the_earlier_report_as_it_was(report, tmp_path, monkeypatch):
    """Review fix: a page failing after others were written left new pages and tables beside the old
    ones; now the report is built in a staging folder that replaces --out only when complete."""
    runs, built, _ = report
    out = tmp_path / "report"
    shutil.copytree(built, out)
    before = _files(out)
    _stand_in_pages(monkeypatch, failing="attention_masks")  # after aggregate.html and tables/ were made
    with pytest.raises(AgpnetError, match="attention_masks.ipynb: cell 2 failed"):
        build_report(runs, out)
    assert _files(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["report"]  # no staging folder left


def test_a_rebuild_replaces_the_whole_earlier_report(report, tmp_path, monkeypatch):
    runs, built, _ = report
    out = tmp_path / "report"
    shutil.copytree(built, out)
    _stand_in_pages(monkeypatch)
    assert build_report(runs, out) == out / "index.html"
    assert sorted(_files(out)) == [*sorted(f"{name}.html" for name in PAGES), "index.html", "tables/new.csv"]
    assert 'href="tables/new.csv"' in (out / "index.html").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["report"]


def test_out_must_be_new_empty_or_an_earlier_report(report, tmp_path):
    runs, _, _ = report
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("mine")
    with pytest.raises(AgpnetError, match="folder is not empty"):
        build_report(runs, notes)
    with pytest.raises(AgpnetError, match="holds the runs"):
        build_report(runs, runs.parent)
    assert _files(notes) == {"todo.txt": b"mine"} and sorted(p.name for p in runs.parent.iterdir()) == ["report", "runs"]
