"""The README states what the code does: its faithfulness table and its two set-up commands."""
from pathlib import Path

from fga.models.grm.model import faithfulness_markdown

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_faithfulness_table_matches_grm_options():
    start = README.index("<!-- faithfulness:start -->\n") + len("<!-- faithfulness:start -->\n")
    assert README[start : README.index("<!-- faithfulness:end -->")] == faithfulness_markdown()


def test_readme_commands_exist_in_makefile():
    makefile = (Path(__file__).resolve().parent.parent / "Makefile").read_text()
    assert "make run" in README and "make test" in README
    assert "\nrun:" in makefile and "\ntest:" in makefile
