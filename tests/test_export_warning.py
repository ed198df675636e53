"""Exported tables say when their runs had an encoder without pretrained weights."""

import pandas as pd
from fixtures_runs import write_run

from agpnet import tables
from agpnet.records import load_records


def test_exports_carry_the_random_weights_warning(tmp_path):
    write_run(tmp_path / "runs/random", pretrained=False)
    write_run(tmp_path / "runs/pretrained", seed=1)
    write_run(tmp_path / "runs/visa", dataset="visa", setting="one-class", categories=("candle",))
    records = load_records(tmp_path / "runs")
    by_key = {t.key: t for t in tables.paper_tables(records)}
    tables.export_tables(list(by_key.values()), tmp_path / "out", records)

    csv = (tmp_path / "out/mvtec_multi-class.csv").read_text()
    assert csv.startswith("# WARNING: 1 of 2 run(s) in this table had an encoder without pretrained weights "
                          "(random init): their numbers are not AGPNet results\n")
    frame = pd.read_csv(tmp_path / "out/mvtec_multi-class.csv", comment="#", dtype=str, keep_default_na=False)
    pd.testing.assert_frame_equal(frame, by_key["mvtec_multi-class"].frame.astype(str))
    markdown = (tmp_path / "out/mvtec_multi-class.md").read_text().splitlines()
    assert markdown[2] == "**WARNING: 1 of 2 run(s) in this table had an encoder without pretrained weights " \
                          "(random init): their numbers are not AGPNet results**"
    latex = (tmp_path / "out/mvtec_multi-class.tex").read_text().splitlines()
    assert latex[1].startswith("% WARNING: 1 of 2 run(s)")

    # A table whose runs were all pretrained carries no warning; nor does an export without records.
    for suffix in ("csv", "md", "tex"):
        assert "WARNING" not in (tmp_path / f"out/visa_one-class.{suffix}").read_text()
    tables.export_tables([by_key["mvtec_multi-class"]], tmp_path / "plain")
    assert "WARNING" not in (tmp_path / "plain/mvtec_multi-class.csv").read_text()
