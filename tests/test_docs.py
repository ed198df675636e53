"""The project's documents: every cited document exists, docs/method.md names every config
field, and docs/published.md mirrors agpnet/published.py."""

import re
from pathlib import Path

import pytest

from agpnet.config import flat_fields
from agpnet.metrics import METRICS
from agpnet.published import PUBLISHED

ROOT = Path(__file__).resolve().parents[1]
CITING = ("agpnet", "notebooks", "tests", "benchmarks", "sweeps", "README.md")
SUFFIXES = (".py", ".ipynb", ".md", ".yaml", ".sh")
DOCS_PATH = re.compile(r"\bdocs/([\w./-]+?\.md)\b")  # "docs/<name>.md"
BARE_NAME = re.compile(r"(?<![\w/.-])([\w-]+\.md)\b")  # "<name>.md" without a folder


def citing_files() -> list[Path]:
    files = []
    for name in CITING:
        path = ROOT / name
        files += [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES)
    return files


def citations(pattern: re.Pattern) -> list[tuple[str, str]]:
    """(file:line, cited name) for every match of `pattern` in the citing files."""
    found = []
    for path in citing_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            found += [(f"{path.relative_to(ROOT)}:{number}", m.group(1)) for m in pattern.finditer(line)]
    return found


def test_the_scan_sees_the_known_citations():
    cited = {name for _, name in citations(DOCS_PATH)}
    assert {"method.md", "metrics.md", "datasets.md", "published.md", "contracts.md"} <= cited


def test_every_cited_docs_path_exists():
    missing = [f"{where}: docs/{name}" for where, name in citations(DOCS_PATH) if not (ROOT / "docs" / name).is_file()]
    assert not missing, "cited documents that do not exist:\n" + "\n".join(missing)


def test_every_bare_document_name_exists():
    # "see metrics.md" means docs/metrics.md (or a file at the repository root, e.g. README.md).
    missing = [f"{where}: {name}" for where, name in citations(BARE_NAME)
               if not ((ROOT / "docs" / name).is_file() or (ROOT / name).is_file())]
    assert not missing, "cited documents that do not exist:\n" + "\n".join(missing)


@pytest.mark.parametrize("field", sorted(flat_fields()))
def test_method_doc_names_every_config_field(field):
    assert f"`{field}`" in (ROOT / "docs" / "method.md").read_text(encoding="utf-8"), (
        f"config field {field!r} is not documented in docs/method.md (section 'Config reference')")


def published_line(row: dict) -> str:
    def cell(value):
        return "–" if value is None else f"{value:.1f}"

    setting = row["setting"] + (f" ({row['shots']}-shot)" if row["shots"] is not None else "")
    cells = [row["method"], row["dataset"], setting, *(cell(row["metrics"][k]) for k in METRICS), row["source"]]
    return "| " + " | ".join(cells) + " |"


def test_published_doc_mirrors_published_rows():
    text = (ROOT / "docs" / "published.md").read_text(encoding="utf-8")
    expected = [published_line(row) for row in PUBLISHED]
    missing = [line for line in expected if line not in text.splitlines()]
    assert not missing, "docs/published.md lacks these table lines:\n" + "\n".join(missing)
    lines = text.splitlines()
    start = lines.index(expected_header()) + 2  # the header, then the |---| line
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    extra = [line for line in rows if line not in expected]
    assert not extra, "docs/published.md has rows that agpnet/published.py does not hold:\n" + "\n".join(extra)


def expected_header() -> str:
    return "| method | dataset | setting | I-AUROC | I-AP | I-F1max | P-AUROC | P-AP | P-F1max | AUPRO | mAD | source |"
