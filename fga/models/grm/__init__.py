"""GRM: granularity-aware and region-uncertain modelling (one module a component)."""
from fga.models.grm.model import FAITHFULNESS, GRM

__all__ = ["GRM", "FAITHFULNESS"]
