"""Result tables in the paper's format, collected from run folders.

`paper_tables(records)` turns run records (agpnet.records.load_records) into one table per
(dataset, setting[, shots]): a row per category plus "mean", a column per metric of
agpnet.metrics.METRICS (I-AUROC / I-AP / I-F1max / P-AUROC / P-AP / P-F1max / AUPRO / mAD) in
percent with one decimal. Runs that differ only by seed (or by category, for one-class)
are one method; several seeds give "mean ± std" (sample std over seeds). The mean row averages
only the seeds that cover every category of the method (the note names the others); two runs of
one method and seed on one category are refused (AgpnetError). Configurations that
differ in other fields (e.g. ablation switches) are separate methods named by those fields.
Published numbers follow, labelled "(published)". `export_tables` writes CSV, Markdown and
LaTeX (booktabs).
"""

import html
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from agpnet.atomic import write_text
from agpnet.config import RunConfig, field_names
from agpnet.errors import AgpnetError
from agpnet.metrics import METRICS
from agpnet.published import DATASET_CATEGORIES, published_rows
from agpnet.records import flat_config

# Record metric key -> column name, in table order (the metric registry).
COLUMNS = {key: metric.label for key, metric in METRICS.items()}
# From the config fields' meaning (agpnet.config.meaning): what does not make two runs a different
# method (seeds, the data's identity, runtime settings), what makes repeats, and the ablation factors.
NOT_METHOD_FIELDS = tuple(name for name in field_names() if name not in field_names(kind="recipe"))
SEED_FIELDS = field_names(kind="seed")
ABLATION_FACTORS = field_names(ablation=True)
_RECIPE = field_names(kind="recipe")
_DEFAULTS = RunConfig.defaults()
OURS = "AGPNet (ours)"
MISSING = "–"  # no published number
UNDEFINED = "NaN"  # our metric is undefined (e.g. no defective test image; see metrics.md)


@dataclass
class Table:
    """One paper table. `frame`: strings, columns method, category, one per metric (COLUMNS), source.
    `mean` / `std`: the numbers behind it (percent; index (method, category); std NaN for 1 seed)."""

    key: str  # file-name stem, e.g. "mvtec_multi-class" or "mvtec_few-shot_2shot"
    title: str
    dataset: str
    setting: str
    shots: int | None
    frame: pd.DataFrame
    mean: pd.DataFrame
    std: pd.DataFrame
    note: str = ""  # caveat printed under the table (e.g. published means over more categories)

    def to_html(self) -> str:
        """Title, table and note as HTML, every value escaped (for notebooks and reports)."""
        note = f"<p><em>{html.escape(self.note)}</em></p>" if self.note else ""
        return heading(self.title) + self.frame.to_html(index=False, escape=True, border=0,
                                                        classes="agpnet-table") + note


def heading(text: str) -> str:
    """An escaped HTML heading for a table or plot."""
    return f"<h3>{html.escape(text)}</h3>"


def not_pretrained(records: list[dict]) -> list[dict]:
    """The runs whose encoder did not have pretrained weights (their numbers are not AGPNet results)."""
    return [r for r in records if not (r.get("weights") or {}).get("pretrained", False)]


def run_fields(record: dict) -> dict:
    """The run's flat config (records.flat_config) with lists as tuples (hashable)."""
    return {k: _hashable(v) for k, v in flat_config(record).items()}


def metrics_frame(records: list[dict]) -> pd.DataFrame:
    """Long table: one row per (run, category) including category "mean", with the run's flat
    config fields as columns (lists as "3,6,9,12") and the metrics as fractions (NaN where null)."""
    rows = []
    for record in records:
        fields = {k: _display(v) for k, v in run_fields(record).items()}
        fields.pop("category", None)
        weights = record.get("weights") or {}
        for category, values in record["metrics"].items():
            rows.append({**fields, "run_dir": record["run_dir"], "category": category,
                         "pretrained": weights.get("pretrained"),
                         **{k: _number(values.get(k)) for k in COLUMNS}})
    return pd.DataFrame(rows)


def paper_tables(records: list[dict], published: bool = True) -> list[Table]:
    """One Table per (dataset, setting, shots), in a stable order (see module docstring)."""
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        fields = run_fields(record)
        shots = fields.get("shots") if fields.get("setting") == "few-shot" else None
        groups.setdefault((str(fields.get("dataset")), str(fields.get("setting")), shots), []).append(record)
    tables = [_table(dataset, setting, shots, group, published)
              for (dataset, setting, shots), group in sorted(groups.items(), key=lambda kv: _sort_key(kv[0]))]
    return tables


def export_tables(tables: list[Table], out_dir: str | Path, records: list[dict] | None = None) -> list[Path]:
    """Write `<key>.csv`, `<key>.md` and `<key>.tex` (booktabs) per table, atomically; returns the paths.

    Given the `records` the tables were made from, a table with runs whose encoder had no
    pretrained weights carries a warning: a first line "# WARNING: ..." in the CSV (read it with
    pandas.read_csv(path, comment="#")), a bold line under the Markdown title, "% WARNING: ..."
    in the LaTeX."""
    out_dir = Path(out_dir)
    written = []
    for table in tables:
        warning = export_warning(table, records or [])
        csv = (f"# WARNING: {warning}\n" if warning else "") + table.frame.to_csv(index=False)
        written.append(write_text(out_dir / f"{table.key}.csv", csv))
        written.append(write_text(out_dir / f"{table.key}.md", to_markdown(table, warning)))
        written.append(write_text(out_dir / f"{table.key}.tex", to_latex(table, warning)))
    return written


def export_warning(table: Table, records: list[dict]) -> str | None:
    """The weights warning of a table: how many of its runs (among `records`) had an encoder
    without pretrained weights; None when there is none."""
    mine = []
    for record in records:
        fields = run_fields(record)
        shots = fields.get("shots") if fields.get("setting") == "few-shot" else None
        if (str(fields.get("dataset")), str(fields.get("setting")), shots) == (table.dataset, table.setting,
                                                                               table.shots):
            mine.append(record)
    random = not_pretrained(mine)
    if not random:
        return None
    sources = sorted({str((r.get("weights") or {}).get("source") or "unknown source") for r in random})
    return (f"{len(random)} of {len(mine)} run(s) in this table had an encoder without pretrained weights "
            f"({', '.join(sources)}): their numbers are not AGPNet results")


def to_markdown(table: Table, warning: str | None = None) -> str:
    frame = table.frame
    lines = [f"**{_md_escape(table.title)}**", "", "| " + " | ".join(frame.columns) + " |",
             "|" + "|".join(["---"] * 2 + ["---:"] * len(COLUMNS) + ["---"]) + "|"]
    if warning:
        lines[1:1] = ["", f"**WARNING: {_md_escape(warning)}**"]
    lines += ["| " + " | ".join(_md_escape(str(v)) for v in row) + " |"
              for row in frame.itertuples(index=False)]
    if table.note:
        lines += ["", f"*{_md_escape(table.note)}*"]
    return "\n".join(lines) + "\n"


def to_latex(table: Table, warning: str | None = None) -> str:
    frame = table.frame
    lines = [f"% {table.title}", *([f"% WARNING: {warning}"] if warning else []),
             r"\begin{tabular}{ll" + "r" * len(COLUMNS) + "l}", r"\toprule",
             " & ".join(_tex_escape(c) for c in frame.columns) + r" \\", r"\midrule"]
    previous = None
    for row in frame.itertuples(index=False):
        block = "published" if row.method.endswith("(published)") else row.method
        if previous is not None and block != previous:
            lines.append(r"\midrule")
        previous = block
        lines.append(" & ".join(_tex_escape(str(v)) for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"] + ([f"% {table.note}"] if table.note else [])
    return "\n".join(lines) + "\n"


def ablation_frame(frame: pd.DataFrame, factor: str,
                   factors: tuple[str, ...] = ABLATION_FACTORS) -> pd.DataFrame:
    """Per (value of `factor`, seed) and metric: the mean over categories, every other factor at
    its baseline.

    `frame` is a `metrics_frame` of one study context (ablation_studies splits the runs by the
    fields a study holds fixed). The baseline of another factor is its config default when a run
    has it, else its most frequent value over the distinct configurations (ties: the first in
    sorted order). A seed's value is the mean over the categories that every (value, seed) has
    (the categories of a multi-class run, or the one-class runs of that seed), so that the values
    compare on the same categories. Returns columns factor, seed, runs (their folders), metric
    (column name), value (percent); `attrs` "fixed" ({factor: baseline} where that is not the
    default) and "left_out" (categories not every (value, seed) has). Empty when the factor takes
    fewer than two values."""
    empty = pd.DataFrame(columns=[factor, "seed", "runs", "metric", "value"])
    rows = frame[frame["category"] != "mean"]
    if factor not in rows or rows[factor].nunique(dropna=False) < 2:
        return empty
    others = [f for f in factors if f != factor and f in rows]
    configs = rows.drop_duplicates(subset=[factor, *others])
    keep, fixed = np.ones(len(rows), dtype=bool), {}
    for other in others:
        default = _display(_hashable(_DEFAULTS[other]))
        has_default = _equal(configs[other], default).any()
        baseline = default if has_default else configs[other].mode(dropna=False).iloc[0]
        if not has_default:
            fixed[other] = baseline
        keep &= _equal(rows[other], baseline).to_numpy()
    subset = rows[keep]
    if subset[factor].nunique(dropna=False) < 2:
        return empty
    groups = list(subset.groupby([factor, "seed"], dropna=False, sort=True))
    common = set.intersection(*(set(part["category"]) for _, part in groups))
    values = []
    for (value, seed), part in groups:
        twice = part[part["category"].duplicated()]
        if len(twice):
            category = twice["category"].iloc[0]
            dirs = sorted(part.loc[part["category"] == category, "run_dir"])
            raise AgpnetError(f"{dirs[0]} and {dirs[1]}: two runs of one configuration and seed hold "
                              f"category {category}; an ablation needs one run per configuration, seed "
                              "and category: keep one of them")
        kept = part[part["category"].isin(common)]
        means = _category_mean(kept[list(COLUMNS)].to_numpy(dtype=float))
        runs = ", ".join(sorted(set(kept["run_dir"])))
        values += [{factor: value, "seed": seed, "runs": runs, "metric": label, "value": 100 * mean}
                   for label, mean in zip(COLUMNS.values(), means)]
    long = pd.DataFrame(values, columns=list(empty.columns)) if common else empty
    long.attrs.update(fixed=fixed, left_out=sorted(set(subset["category"]) - common))
    return long


def ablation_studies(frame: pd.DataFrame,
                     factors: tuple[str, ...] = ABLATION_FACTORS) -> list[tuple[str, str, pd.DataFrame]]:
    """(title, factor, ablation_frame) for every study context and every factor that takes two or
    more values there; empty when the runs hold no ablation. A context holds fixed the dataset,
    setting and shots, every other recipe field (epochs, image size, ...), the data root and
    whether the encoder was pretrained: runs that differ in any of them are never compared. The
    title names what tells contexts of one dataset and setting apart, the baselines that are not
    the defaults, the categories left out, and random encoder weights."""
    keys = [k for k in (*_RECIPE, "root", "pretrained") if k in frame and k not in factors]
    contexts = list(frame.groupby(keys, dropna=False, sort=True)) if keys else [((), frame)]
    found = []  # (the context's fields, factor, ablation_frame)
    for context, part in contexts:
        fields = dict(zip(keys, context if isinstance(context, tuple) else (context,)))
        for factor in factors:
            long = ablation_frame(part, factor, factors)
            if len(long):
                found.append((fields, factor, long))
    studies = []
    for fields, factor, long in found:
        name = " ".join(str(fields[k]) for k in ("dataset", "setting", "shots")
                        if k in fields and fields[k] is not None and fields[k] == fields[k])
        siblings = [other for other, _, _ in found if _table_of(other) == _table_of(fields)]
        differ = [k for k in keys if len({repr(s.get(k)) for s in siblings}) > 1 and k != "pretrained"]
        if differ:
            name += " (" + ", ".join(f"{k}={fields[k]}" for k in differ) + ")"
        studies.append((_study_title(name, factor, long, fields.get("pretrained")), factor, long))
    return studies


def _table_of(fields: dict) -> tuple:
    return tuple(repr(fields.get(k)) for k in ("dataset", "setting", "shots"))


def _study_title(name: str, factor: str, long: pd.DataFrame, pretrained) -> str:
    fixed = long.attrs.get("fixed") or {}
    title = f"{name}: {factor}"
    if fixed:
        title += " (with " + ", ".join(f"{k}={v}" for k, v in fixed.items()) + ")"
    if long.attrs.get("left_out"):
        title += f"; categories not in every run, left out: {', '.join(long.attrs['left_out'])}"
    if pretrained is not True:
        title += " — RANDOM encoder weights: not AGPNet results"
    return title


def ablation_summary(long: pd.DataFrame, factor: str) -> pd.DataFrame:
    """Rows = values of the factor, columns = metrics, cells "mean ± std" over seeds (percent),
    and the number of seeds."""
    stats = long.groupby([factor, "metric"], sort=True)["value"].agg(["mean", "std", "count"]).reset_index()
    stats["text"] = [format_value(m, s if n > 1 else None)
                     for m, s, n in zip(stats["mean"], stats["std"], stats["count"])]
    table = stats.pivot(index=factor, columns="metric", values="text")
    table = table[[c for c in COLUMNS.values() if c in table.columns]]
    seeds = long.groupby(factor)["seed"].nunique().rename("seeds")
    return table.join(seeds).reset_index()


def _equal(values: pd.Series, value) -> pd.Series:
    """values == value elementwise, with None/NaN equal to None/NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return values.isna()
    return values.map(lambda v: v == value if not (v is None or v != v) else False).astype(bool)


def format_value(mean: float, std: float | None = None) -> str:
    """Percent with one decimal, "m ± s" when a std is given (NaN -> "NaN")."""
    if mean is None or math.isnan(mean):
        return UNDEFINED
    if std is None or math.isnan(std):
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {std:.1f}"


def _table(dataset: str, setting: str, shots, records: list[dict], published: bool) -> Table:
    methods = _methods(records)
    rows, means, stds, notes = [], {}, {}, []
    for label, runs in methods.items():
        repeats = _repeats(runs)
        categories = _category_order(runs)
        # the mean row averages seeds that each cover every category (else their means differ in kind)
        whole = [rep for rep in repeats if set(_category_order(rep)) == set(categories)]
        if len(whole) < len(repeats):
            notes.append(_incomplete_note(label, repeats, whole, categories))
        for category in [*categories, "mean"]:
            chosen = whole if category == "mean" else repeats
            per_repeat = [_repeat_values(rep, category) for rep in chosen]
            per_repeat = [v for v in per_repeat if v is not None]
            if not per_repeat:
                continue
            values = 100 * np.array(per_repeat, dtype=float)  # (repeats, metrics)
            mean = values.mean(axis=0)
            std = values.std(axis=0, ddof=1) if len(values) > 1 else np.full(len(COLUMNS), np.nan)
            means[(label, category)], stds[(label, category)] = mean, std
            rows.append({"method": label, "category": category,
                         **{c: format_value(m, s) for c, m, s in zip(COLUMNS.values(), mean, std)},
                         "source": _source([r for rep in chosen for r in rep], category, categories)})
    ours = {c for label in methods for c in _category_order(methods[label])}
    known = set(DATASET_CATEGORIES.get(dataset, ()))
    if published and not ours <= known:
        published = False  # not the benchmark's categories (e.g. the synthetic set in the MVTec layout)
        if known:
            notes.append(f"No published rows: the categories are not those of the {dataset} benchmark "
                         "(a dataset in its layout, e.g. the synthetic demo set).")
    elif published and ours != known and published_rows(dataset, setting, shots):
        notes.append(f"Ours: {len(ours)} of the {len(known)} {dataset} categories; "
                     f"the published numbers are means over all {len(known)}, "
                     "so the mean rows are not comparable.")
    note = " ".join(notes)
    if published:
        for row in published_rows(dataset, setting, shots):
            label = f"{row['method']} (published)"
            values = [row["metrics"][k] for k in COLUMNS]
            means[(label, "mean")] = np.array([np.nan if v is None else v for v in values], dtype=float)
            stds[(label, "mean")] = np.full(len(COLUMNS), np.nan)
            cells = {c: MISSING if v is None else f"{v:.1f}" for c, v in zip(COLUMNS.values(), values)}
            rows.append({"method": label, "category": "mean", **cells, "source": row["source"]})
    key = f"{dataset}_{setting}" + (f"_{shots}shot" if shots is not None else "")
    title = f"{dataset} {setting}" + (f" {shots}-shot" if shots is not None else "")
    columns = ["method", "category", *COLUMNS.values(), "source"]
    index = pd.MultiIndex.from_tuples(list(means), names=["method", "category"])
    return Table(key=key, title=title, dataset=dataset, setting=setting, shots=shots, note=note,
                 frame=pd.DataFrame(rows, columns=columns),
                 mean=pd.DataFrame(list(means.values()), index=index, columns=list(COLUMNS.values())),
                 std=pd.DataFrame(list(stds.values()), index=index, columns=list(COLUMNS.values())))


def _incomplete_note(label: str, repeats: list[list[dict]], whole: list[list[dict]],
                     categories: list[str]) -> str:
    """Which seeds of a method lack categories, and what its mean row is made of then."""
    lacking = []
    for rep in repeats:
        if rep not in whole:
            missing = [c for c in categories if c not in _category_order(rep)]
            lacking.append(f"seed {run_fields(rep[0]).get('seed')} lacks {', '.join(missing)}")
    made_of = (f"its mean row is over the {_count(len(whole), 'seed')} with every category" if whole
               else "it has no mean row: no seed covers every category")
    return f"{label}: {'; '.join(lacking)}; {made_of}."


def _source(runs: list[dict], category: str, categories: list[str]) -> str:
    """What a row is made of: "1 run" (a category of one run), "2 runs" (seeds), or for the mean
    row "3 categories, 3 runs" (one-class: one run per category)."""
    if category != "mean":
        return _count(sum(category in r["metrics"] for r in runs), "run")
    return f"{_count(len(categories), 'category', 'categories')}, {_count(len(runs), 'run')}"


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def _methods(records: list[dict]) -> dict[str, list[dict]]:
    """Group runs by their recipe (config without NOT_METHOD_FIELDS); label by the differing fields."""
    signatures = {}
    for record in records:
        fields = run_fields(record)
        signature = tuple(sorted((k, v) for k, v in fields.items() if k not in NOT_METHOD_FIELDS))
        signatures.setdefault(signature, []).append(record)
    if len(signatures) == 1:
        (runs,) = signatures.values()
        return {_ours_label({}, runs): runs}
    dicts = [dict(s) for s in signatures]
    varying = sorted({k for d in dicts for k in d if len({repr(x.get(k)) for x in dicts}) > 1})
    return {_ours_label({k: dict(s).get(k) for k in varying}, runs): runs for s, runs in signatures.items()}


def _ours_label(varying: dict, runs: list[dict]) -> str:
    n_seeds = len(_repeats(runs))
    parts = [f"{k}={_display(v)}" for k, v in varying.items()]
    if n_seeds > 1:
        parts.append(f"{n_seeds} seeds")
    return OURS if not parts else f"{OURS[:-1]}; {', '.join(parts)})"


def _repeats(runs: list[dict]) -> list[list[dict]]:
    """Runs grouped by seed (one-class: one run per category and seed)."""
    by_seed: dict[tuple, list[dict]] = {}
    for record in runs:
        fields = run_fields(record)
        by_seed.setdefault(tuple(repr(fields.get(k)) for k in SEED_FIELDS), []).append(record)
    return [by_seed[k] for k in sorted(by_seed)]


def _repeat_values(runs: list[dict], category: str) -> list[float] | None:
    """One seed's metrics (fractions, COLUMNS order) for a category, or for "mean": the record's
    own mean when one run holds every category, else the mean over the categories of its runs."""
    if category == "mean":
        if len(runs) == 1 and "mean" in runs[0]["metrics"]:
            return _metric_list(runs[0]["metrics"]["mean"])
        per_category = [_repeat_values(runs, c) for c in _category_order(runs)]
        per_category = [v for v in per_category if v is not None]
        if not per_category:
            return None
        return list(_category_mean(np.array(per_category, dtype=float)))
    found = [r for r in runs if category in r["metrics"]]
    if len(found) > 1:
        raise AgpnetError(f"{found[0]['run_dir']} and {found[1]['run_dir']}: two runs of one method and seed "
                          f"hold category {category} (the same run twice, or on two copies of the data); "
                          "a table needs one run per method, seed and category: keep one of them")
    return _metric_list(found[0]["metrics"][category]) if found else None


def _category_mean(values: np.ndarray) -> np.ndarray:
    """Mean over categories (rows) of (categories, metrics), NaN skipped as in MetricAccumulator's
    mean; a metric NaN in every category stays NaN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=0)


def _category_order(runs: list[dict]) -> list[str]:
    seen = []
    for record in sorted(runs, key=lambda r: str(run_fields(r).get("category"))):
        for category in record.get("categories") or [c for c in record["metrics"] if c != "mean"]:
            if category not in seen and category in record["metrics"]:
                seen.append(category)
    return seen


def _metric_list(values: dict) -> list[float]:
    return [_number(values.get(k)) for k in COLUMNS]


def _number(value) -> float:
    return float("nan") if value is None else float(value)


def _hashable(value):
    if isinstance(value, list | tuple):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return value


def _display(value) -> str | int | float | bool | None:
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value)
    return value


def _sort_key(group: tuple) -> tuple:
    dataset, setting, shots = group
    order = {"multi-class": 0, "one-class": 1, "few-shot": 2}
    return dataset, order.get(setting, 3), setting, shots if shots is not None else -1


def _md_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
        ">": r"\textgreater{}", "±": r"$\pm$", "–": "--"}


def _tex_escape(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in text)
