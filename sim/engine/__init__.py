"""pagesim.sim.engine: the SimPy layer. Processes that drive the pure core
(scheduler, KV-cache manager) and ask an executor how long each step takes."""
from pagesim.sim.engine.engine import Engine, cyclic_gc_paused

__all__ = ["Engine", "cyclic_gc_paused"]
