"""Scripts that measure bilevel and rl_adapters and write docs/benchmarks.md, one section each.

Run them as modules from the repository root, e.g. ``python -m benchmarks.offline_rl --preset quick``.
"""
