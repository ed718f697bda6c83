"""The README and docs/ state what the code does: set-up commands, links, the faithfulness table, citations."""
import re
import subprocess
import unicodedata
from pathlib import Path

import pytest

from fga.models.grm.model import faithfulness_markdown

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
DOCS = ROOT / "docs"
MAKEFILE = (ROOT / "Makefile").read_text()
MAX_README_LINES = 150

LINK = re.compile(r"\]\(([^)\s]+)\)")
# a citation of a spec or asset file that does not ship with the repository (docs/grm.md does)
STALE_CITATION = re.compile(r"\b(?:GRM|ASSETS)\.md\b")
# outputs and environments that are not the project's own text
SKIP_DIRS = {".git", ".venv", ".snakemake", ".dvc", "data", "features", "runs", "results", "mlartifacts",
             "downloads", "logs", "__pycache__", ".pytest_cache"}


def _slug(heading: str) -> str:
    """GitHub's anchor for a markdown heading: lower case, punctuation dropped, spaces -> hyphens."""
    text = heading.strip().lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def _anchors(markdown: str) -> set[str]:
    text = re.sub(r"```.*?```", "", markdown, flags=re.S)
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", text, flags=re.M)}


def _local_links(path: Path) -> list[tuple[Path, str]]:
    """(target file, anchor) of every relative link in a markdown file; images and web links excluded."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    links = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue
        file_part, _, anchor = target.partition("#")
        links.append(((path.parent / file_part).resolve() if file_part else path, anchor))
    return links


def _project_text_files() -> list[Path]:
    try:
        listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                                capture_output=True, text=True).stdout.splitlines()
        files = [ROOT / f for f in listed]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (e.g. an unpacked sdist)
        files = [p for p in ROOT.rglob("*") if not SKIP_DIRS & set(p.relative_to(ROOT).parts)
                 and not any(part.endswith(".egg-info") for part in p.relative_to(ROOT).parts)]
    return [p for p in files if p.is_file()]


def test_quick_start_commands_are_the_makefile_targets():
    assert "make run     # creates .venv, installs, runs `snakemake --cores all` on the embedded default dataset" in README
    assert "make test    # creates .venv if missing, runs the whole test suite" in README
    assert "make dry-run" in README
    for target in ("run", "test", "dry-run"):
        assert f"\n{target}:" in MAKEFILE


def test_readme_says_how_to_use_the_venv_that_make_puts_on_path():
    assert re.search(r"^export PATH := .*\$\(VENV\)/bin", MAKEFILE, flags=re.M)
    assert "source .venv/bin/activate" in README


def test_readme_is_a_short_front_page():
    assert len(README.splitlines()) <= MAX_README_LINES


def test_readme_links_every_docs_page_and_each_exists():
    linked = {target.name for target, _ in _local_links(ROOT / "README.md")
              if target.parent == DOCS and target.suffix == ".md"}
    assert linked == {p.name for p in DOCS.glob("*.md")}
    for target, _ in _local_links(ROOT / "README.md"):
        assert target.exists(), f"README.md links to {target.relative_to(ROOT)}, which does not exist"


@pytest.mark.parametrize("page", ["README.md", *sorted(f"docs/{p.name}" for p in DOCS.glob("*.md"))])
def test_relative_links_and_anchors_resolve(page):
    for target, anchor in _local_links(ROOT / page):
        assert target.exists(), f"{page} links to missing {target}"
        if anchor and target.suffix == ".md":
            assert anchor in _anchors(target.read_text()), f"{page}: no heading #{anchor} in {target.name}"


def test_every_docs_page_has_a_table_of_contents():
    for page in DOCS.glob("*.md"):
        text = page.read_text()
        assert "## Contents" in text, page.name
        contents = text.split("## Contents", 1)[1].split("\n## ", 1)[0]
        assert set(re.findall(r"\]\(#([^)]+)\)", contents)) == _anchors(text) - {"contents"} - {
            _slug(re.match(r"#\s+(.+)", text).group(1))}, page.name


def test_faithfulness_table_matches_grm_options():
    methods = (DOCS / "methods.md").read_text()
    start = methods.index("<!-- faithfulness:start -->\n") + len("<!-- faithfulness:start -->\n")
    assert methods[start : methods.index("<!-- faithfulness:end -->")] == faithfulness_markdown()


def test_readme_main_table_is_the_benchmarked_run():
    """The front page's table is the default table of docs/benchmarks.md, fewer constant columns."""
    def rows(text: str, first: str) -> dict[tuple[str, str, str], list[str]]:
        table = text[text.index(first):].split("\n\n", 1)[0].splitlines()
        head = [c.strip() for c in table[0].strip("|").split("|")]
        out = {}
        for line in table[2:]:
            cells = dict(zip(head, (c.strip() for c in line.strip("|").split("|"))))
            out[(cells["Backbone"], cells["Text"], cells["Method"])] = [cells[h] for h in head if h.startswith(("i2t", "t2i", "rSum", "Seeds"))]
        return out

    bench = (DOCS / "benchmarks.md").read_text()
    front = rows(README, "| Backbone | Text | Method |")
    assert len(front) == 6
    assert front == rows(bench[bench.index("### The default table"):], "| Dataset | Backbone |")


def test_no_file_cites_a_spec_that_does_not_ship():
    offenders = []
    for path in _project_text_files():
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        offenders += [f"{path.relative_to(ROOT)}:{i}" for i, line in enumerate(text.splitlines(), 1)
                      if STALE_CITATION.search(line)]
    assert not offenders, f"cite docs/grm.md instead: {offenders}"
