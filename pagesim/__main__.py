"""``python -m pagesim`` and the ``pagesim`` command (``run``)."""
import os
import sys


def run() -> None:
    # Arrow picks its C++ default allocator once, when it is loaded: the
    # system allocator returns the freed blocks of a long run's tables
    # (pagesim/process.py), so it is chosen before anything imports pyarrow.
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    from pagesim.cli import main  # after the environment is set: see above
    sys.exit(main())


if __name__ == "__main__":
    run()
