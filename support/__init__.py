"""Helpers shared by the tests and the benches: real servers, far-end simulators, waiting.

Not part of the wheel (``pyproject.toml`` lists the packages it ships); the
tests and ``bench/`` import it from the checkout.
"""
