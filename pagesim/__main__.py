"""``python -m pagesim`` and the ``pagesim`` command (``run``)."""
import gc
import os
import sys


def run() -> None:
    # Arrow picks its C++ default allocator once, when it is loaded: the
    # system allocator returns the freed blocks of a long run's tables
    # (pagesim/process.py), so it is chosen before anything imports pyarrow.
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    # Imports make hundreds of thousands of objects that live as long as the
    # process (modules, classes, numpy's and tyro's typing tables) and no
    # garbage: collecting while they load rescans them again and again (~0.1 s
    # of every command), and frozen afterwards no later collection scans them.
    gc.disable()
    from pagesim.cli import main  # after the environment is set: see above
    gc.freeze()
    gc.enable()
    sys.exit(main())


if __name__ == "__main__":
    run()
