"""fga: a reproducible benchmark pipeline for fine-grained image-text matching."""

__version__ = "0.1.0"
