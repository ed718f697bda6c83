"""The report's printed notes: what it skipped (a table without runs, an artifact it could not read) and why."""
from __future__ import annotations

import pandas as pd


def say(msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(msg)


def tie_rules(runs: pd.DataFrame) -> list[str]:
    """The tie rules (`evaluate.tie_rule`) the evaluate runs (fga.report.runs.evaluation_runs rows) ranked with."""
    return sorted(set(runs["tie_rule"]))


def ties_note(rules: list[str]) -> str:
    """The line every table of ranks carries: which tie rule its numbers use."""
    from fga.evaluate.recall import TIE_RULE_TEXT

    if len(rules) == 1:
        return f"Ties: `{rules[0]}` rule (evaluate.tie_rule): {TIE_RULE_TEXT[rules[0]]}."
    return (f"Ties: **mixed** rules across these runs ({', '.join(rules)}); rerun `fga evaluate` with one "
            "evaluate.tie_rule before comparing them.")
