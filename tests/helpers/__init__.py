"""Helpers shared by the tests (no test file imports another): fake data sets, the reference
score, the golden outputs, a local HTTP server for downloads. ``tests/zoo_fixtures.py`` (the
published models' reference fixtures) stays at the top of ``tests/``, where
``benchmarks/bench_zoo.py`` imports it too."""
