"""``python -m pagesim``: the same as the ``pagesim`` command."""
import sys

from pagesim.cli import main

sys.exit(main())
