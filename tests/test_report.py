"""The HTML report: pages from the executed notebooks, index, table exports, escaping, failures."""

import datetime
import html
import json
import re

import pytest
from fixtures_runs import EVIL_CATEGORY, demo_report, require_kernel, write_run

from agpnet import tables
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
    assert 'class="banner"' in text and "2 of 5 run(s)" in text
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
    assert not (tmp_path / "report" / "index.html").exists()


def test_no_runs(tmp_path):
    (tmp_path / "runs").mkdir()
    with pytest.raises(AgpnetError, match="no complete run found"):
        build_report(tmp_path / "runs", tmp_path / "report")
