"""Benchmarks (``nnmark bench ...``): grids of method x attack x strength x seed, written to docs/benchmarks/."""
