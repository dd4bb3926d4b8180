"""The benchmarks' tests use the product tests' tiny models (:mod:`tests.support`)."""
from tests.conftest import conditioned_model, parts, weight_files

__all__ = ["conditioned_model", "parts", "weight_files"]
