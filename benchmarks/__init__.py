"""Benchmarks: the framework against a hand-written Kombu baseline, in one run.

Run ``python -m benchmarks`` (full, a few minutes) or ``python -m benchmarks --quick``.
"""
