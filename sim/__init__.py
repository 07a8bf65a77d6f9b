"""pagesim.sim: the block allocator, scheduler and SimPy engine.

Everything below the engine (block pool, KV-cache manager, scheduler) is pure
Python: no SimPy, no torch. The GPU harness drives the very same objects.
"""
