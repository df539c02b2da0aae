"""Data the project generates for its learning benchmarks (benchmarks/learning.py): seeded, invented, small.

Nothing here is taken from a public benchmark: the functions, requests, vendors and sentences are written or
composed here, and every generator is deterministic for a given seed.
"""
