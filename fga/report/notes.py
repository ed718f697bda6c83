"""The report's printed notes: what it skipped (a table without runs, an artifact it could not read) and why."""
from __future__ import annotations


def say(msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(msg)


def tie_rules(cfg: dict, run_ids: list[str]) -> list[str]:
    """The tie rules (`evaluate.tie_rule`) evaluate runs ranked with: metrics.json's `ties` (report.source: files,
    a run id is its results directory) or the run's `evaluate.tie_rule` param; runs from before the option: pessimistic."""
    import json
    from pathlib import Path

    from fga.evaluate.recall import DEFAULT_TIE_RULE
    from fga.report.runs import reads_files

    if reads_files(cfg):
        return sorted({json.loads((Path(r) / "metrics.json").read_text()).get("ties", DEFAULT_TIE_RULE) for r in run_ids})
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=cfg["tracking"]["uri"])
    return sorted({client.get_run(r).data.params.get("evaluate.tie_rule", DEFAULT_TIE_RULE) for r in set(run_ids)})


def ties_note(rules: list[str]) -> str:
    """The line every table of ranks carries: which tie rule its numbers use."""
    from fga.evaluate.recall import TIE_RULE_TEXT

    if len(rules) == 1:
        return f"Ties: `{rules[0]}` rule (evaluate.tie_rule): {TIE_RULE_TEXT[rules[0]]}."
    return (f"Ties: **mixed** rules across these runs ({', '.join(rules)}); rerun `fga evaluate` with one "
            "evaluate.tie_rule before comparing them.")
