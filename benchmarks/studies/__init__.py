"""Research probes: questions asked of the methods on the way (why a loss learns slowly, what guidance
changes), each with its record in ``benchmarks/studies/results/``. Not part of the product's protocol."""
