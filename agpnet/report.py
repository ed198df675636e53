"""HTML report over a folder of runs: executed notebooks converted to self-contained pages.

`build_report(runs_dir, out_dir)` executes notebooks/aggregate.ipynb (tables beside the
published numbers; CSV / Markdown / LaTeX exports in out_dir/tables/), attention_masks.ipynb
and ablations.ipynb with papermill (parameters runs_dir, out_dir), converts each to HTML
without code (images inline as base64, no script from the network), and writes index.html:
links to the pages and table files, the runs with their weights source (a red banner when a
backbone was not pretrained), the machines, package versions and the date. The report is built
in a staging folder and replaces out_dir only when complete; text from the data is HTML-escaped.

    out_dir/index.html, aggregate.html, attention_masks.html, ablations.html,
    out_dir/tables/<dataset>_<setting>[_<k>shot].{csv,md,tex}, out_dir/notebooks/*.ipynb (executed)
"""

import html
import os
import platform
from pathlib import Path

from agpnet import tables
from agpnet.atomic import replace_folder, temp_file_for, write_text
from agpnet.environment import machine, package_version, timestamp
from agpnet.errors import AgpnetError
from agpnet.metrics import HEADLINE_KEYS, METRICS
from agpnet.records import load_records
from agpnet.sweep import KERNEL, package_notebook

PAGES = {
    "aggregate": "Results tables (ours beside the published numbers)",
    "attention_masks": "Attention masks and perturbations",
    "ablations": "Ablations",
}
VERSIONED = ("agpnet", "torch", "timm", "numpy", "scipy", "scikit-learn", "pandas", "matplotlib", "seaborn",
             "papermill", "nbconvert")
_OFFLINE_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block extra_css -%}
<style>
.jp-RenderedHTMLCommon table.agpnet-table td { white-space: nowrap; }
.jp-RenderedHTMLCommon table.agpnet-table td:last-child { white-space: normal; }
.jp-RenderedHTMLCommon table.agpnet-table th:first-child,
.jp-RenderedHTMLCommon table.agpnet-table td:first-child { text-align: left; }
.agpnet-back { margin: 1em 2em; font-family: system-ui, sans-serif; }
</style>
{%- endblock extra_css -%}
{%- block body_header -%}{{ super() }}
<p class="agpnet-back"><a href="index.html">&larr; report index</a></p>
{%- endblock body_header -%}
"""


def build_report(runs_dir: str | Path, out_dir: str | Path) -> Path:
    """Build the report; returns the path of index.html.

    The whole report is built in a staging folder next to `out_dir` and replaces it only once
    every page is done: a failure leaves an earlier report exactly as it was. `out_dir` must be
    new, empty or an earlier report (it is replaced as a whole)."""
    runs_dir, out_dir = Path(runs_dir).resolve(), Path(out_dir).resolve()
    records = load_records(runs_dir)
    if not records:
        raise AgpnetError(f"{runs_dir}: no complete run found "
                          "(expected run folders with record.json, status complete)")
    _check_replaceable(out_dir, runs_dir)

    def build(staging: Path) -> None:
        for name in PAGES:
            html_page = render_notebook(package_notebook(f"{name}.ipynb"), staging / "notebooks",
                                        {"runs_dir": str(runs_dir), "out_dir": str(staging)},
                                        _failed_copy(out_dir, name))
            write_text(staging / f"{name}.html", html_page)
        exports = sorted((staging / "tables").glob("*.*")) if (staging / "tables").is_dir() else []
        write_text(staging / "index.html", index_html(records, runs_dir, staging, exports))

    replace_folder(out_dir, build)
    for name in PAGES:  # an earlier build's failure is no longer the state of this report
        _failed_copy(out_dir, name).unlink(missing_ok=True)
    return out_dir / "index.html"


def _check_replaceable(out_dir: Path, runs_dir: Path) -> None:
    """`out_dir` may be replaced by a report: it is new, empty or an earlier report (index.html),
    and holds no runs."""
    if out_dir.exists() and not out_dir.is_dir():
        raise AgpnetError(f"{out_dir}: expected a folder, found a file")
    if runs_dir.is_relative_to(out_dir):
        raise AgpnetError(f"{out_dir}: holds the runs ({runs_dir}); the report replaces its folder "
                          "as a whole: choose another --out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "index.html").is_file():
        raise AgpnetError(f"{out_dir}: folder is not empty (expected a new folder or an earlier report "
                          "with index.html; the report replaces it as a whole)")


def _failed_copy(out_dir: Path, page: str) -> Path:
    """Where the executed notebook of a page whose build failed is kept (beside the report)."""
    return out_dir.parent / f"{out_dir.name}.failed-{page}.ipynb"


def render_notebook(notebook: Path, executed_dir: Path, parameters: dict, failed_copy: Path) -> str:
    """Execute `notebook` with papermill (kept as executed_dir/<name>) and return it as HTML.

    A failing cell raises AgpnetError naming the notebook, the cell and its error; the executed
    notebook is then kept as `failed_copy`."""
    import nbformat
    import papermill

    tmp = temp_file_for(executed_dir / notebook.name, suffix=".ipynb")
    try:
        papermill.execute_notebook(str(notebook), str(tmp), parameters=parameters, kernel_name=KERNEL,
                                   progress_bar=False, log_output=False)
    except papermill.PapermillExecutionError as err:
        os.replace(tmp, failed_copy)
        message = " ".join(f"{err.ename}: {err.evalue}".split())
        raise AgpnetError(f"{notebook.name}: cell {err.exec_count} failed: {message} "
                          f"(executed notebook: {failed_copy})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, executed_dir / notebook.name)
    return notebook_html(nbformat.read(executed_dir / notebook.name, as_version=4))


def notebook_html(nb) -> str:
    """A notebook as one self-contained HTML page: outputs only, images inline, no network scripts."""
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    nb.metadata.pop("widgets", None)
    exporter = HTMLExporter(template_name="lab", template_file="agpnet_offline.html.j2",
                            extra_loaders=[DictLoader({"agpnet_offline.html.j2": _OFFLINE_TEMPLATE})],
                            exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True,
                            embed_images=True)
    body, _ = exporter.from_notebook_node(nb)
    return body


def index_html(records: list[dict], runs_dir: Path, out_dir: Path, exports: list[Path]) -> str:
    """The report's front page (every value from the data is escaped)."""
    e = html.escape
    not_pretrained = tables.not_pretrained(records)
    sources = sorted({str((r.get("weights") or {}).get("source", "unknown")) for r in records})
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', "<title>agpnet report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>agpnet report</h1>",
        f"<p>{len(records)} complete run(s) under <code>{e(str(runs_dir))}</code>. "
        f"Report built {e(timestamp())}.</p>",
    ]
    if not_pretrained:
        warnings = sorted({str((r.get("weights") or {}).get("warning") or "no warning recorded")
                           for r in not_pretrained})
        parts.append('<div class="banner" role="alert"><strong>Not pretrained:</strong> '
                     f"{len(not_pretrained)} of {len(records)} run(s) used a backbone "
                     "without pretrained weights; their numbers say nothing about AGPNet. "
                     "Warning recorded by the run(s):<ul>"
                     + "".join(f"<li><q>{e(w)}</q></li>" for w in warnings) + "</ul></div>")
    parts.append(f"<p>Weights source(s): {', '.join(f'<code>{e(s)}</code>' for s in sources)}.</p>")
    parts.append("<h2>Pages</h2><ul>" + "".join(f'<li><a href="{name}.html">{e(title)}</a></li>'
                                                 for name, title in PAGES.items()) + "</ul>")
    if exports:
        links = "".join(f'<li><a href="{e(p.relative_to(out_dir).as_posix())}">{e(p.name)}</a></li>'
                        for p in exports)
        parts.append("<h2>Tables (CSV, Markdown, LaTeX)</h2><ul>" + links + "</ul>")
    parts.append("<h2>Runs</h2>" + _runs_table(records, runs_dir))
    parts.append("<h2>Machines and versions</h2>" + _environment_html(records))
    parts.append("<p class='note'>Published numbers are labelled \"(published)\" "
                 "and come from the cited papers and READMEs; "
                 "their AUPRO / F1 protocols and epoch selection differ from ours (docs/metrics.md).</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _runs_table(records: list[dict], runs_dir: Path) -> str:
    e = html.escape
    header = ["run", "dataset", "setting", "categories", "seed", "weights", "device",
              *(METRICS[k].label for k in HEADLINE_KEYS)]
    rows = []
    for record in records:
        mean = record["metrics"].get("mean", {})
        weights = record["weights"]
        run = Path(record["run_dir"])
        name = run.relative_to(runs_dir).as_posix() if run.is_relative_to(runs_dir) else str(run)
        categories = ", ".join(map(str, record["categories"]))
        cells = [name, record["dataset"], record["setting"], categories, record["seed"],
                 f"{weights.get('source', '?')}{'' if weights.get('pretrained') else ' (NOT pretrained)'}",
                 record["environment"].get("device"),
                 *(_percent(mean.get(k)) for k in HEADLINE_KEYS)]
        rows.append("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in cells) + "</tr>")
    return ("<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


def _environment_html(records: list[dict]) -> str:
    e = html.escape
    seen = {}
    for record in records:
        env = record.get("environment") or {}
        key = (env.get("machine"), env.get("device"), env.get("gpu"), env.get("torch"), env.get("timm"),
               env.get("agpnet"), env.get("agpnet_commit"), _placement(env))
        seen[key] = seen.get(key, 0) + 1
    runs = "".join(f"<li>{count} run(s): {e(str(m))}, device {e(str(d))}{', GPU ' + e(str(g)) if g else ''}"
                   f"{'; ' + e(w) if w else ''}; torch {e(str(t))}, timm {e(str(ti))}, agpnet {e(str(a))}"
                   f"{' (commit ' + e(str(c)) + ')' if c else ''}</li>"
                   for (m, d, g, t, ti, a, c, w), count in seen.items())
    versions = ", ".join(f"{e(p)} {e(package_version(p) or 'not installed')}" for p in VERSIONED)
    return (f"<p>Runs were made on:</p><ul>{runs}</ul>"
            f"<p>Report built on {e(machine())}, "
            f"Python {e(platform.python_version())}; {versions}.</p>")


def _placement(env: dict) -> str:
    """Where a run ran: host, sweep executor, GPU index and share ("" for records without them)."""
    parts = [f"host {env['hostname']}"] if env.get("hostname") else []
    if env.get("executor"):
        parts.append(f"{env['executor']} executor")
    if env.get("gpu_index") is not None:
        share = f" ({env['gpu_fraction']:g} of it)" if env.get("gpu_fraction") else ""
        parts.append(f"GPU index {env['gpu_index']}{share}")
    return ", ".join(parts)


def _percent(value) -> str:
    return "–" if value is None else f"{100 * float(value):.1f}"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; padding: 0 1em; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3em 0.6em; text-align: left; }
th { background: #f4f4f4; }
.banner { background: #c62828; color: white; padding: 0.8em 1.2em; border-radius: 4px; margin: 1em 0; }
.note { color: #555; font-size: 0.9em; }
code { background: #f4f4f4; padding: 0 0.2em; }
"""
