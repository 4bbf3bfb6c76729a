"""nnmark: query samples that protect trained neural networks."""

__version__ = "0.1.0"
