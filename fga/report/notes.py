"""The report's printed notes: what it skipped (a table without runs, an artifact it could not read) and why."""
from __future__ import annotations


def say(msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(msg)
