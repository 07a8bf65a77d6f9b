"""Optional log of every allocator reference change, one row each.

Schema (documented in README.md; external tools read it):

``step`` (int, set by the engine), ``seq`` (int, None for ``evict``),
``kind`` (one of KINDS), ``block`` (int), ``src_block`` (int or None).

* ``alloc``     seq takes a block nobody holds
* ``cache_hit`` seq takes a reference to a cached block
* ``fork``      seq (the child) takes a reference to a block another seq holds
* ``cow``       seq drops the shared ``src_block`` and takes the fresh ``block``
* ``free``      seq drops its reference to ``block`` (it may stay cached)
* ``evict``     a block nobody holds loses its cached content (no seq)
* ``swap_out``  seq drops GPU ``src_block`` and takes CPU ``block``
* ``swap_in``   seq drops CPU ``src_block`` and takes GPU ``block``
* ``offload``   GPU ``src_block``'s content, just evicted, is copied to CPU
                offload-tier ``block`` (no seq; ``--cpu-offload-blocks``)
* ``load``      seq's GPU ``block`` (taken by the ``alloc`` just before) is
                filled from CPU offload-tier ``src_block`` instead of computed

GPU and CPU block ids are separate spaces (the swap pool's and the offload
tier's too). Rows are stored as parallel int
lists (cheap to append) and become a DataFrame only when asked.

The log also keeps the sequence map that makes ``seq`` traceable to the
request it serves: one row per sequence, ``seq``, ``request`` (the trace
request id, as in ``requests.parquet``), ``group`` (the scheduler's sequence
group) and ``parent`` (the sequence it was forked from, null for a request's
own sequences).
"""
from __future__ import annotations

from pathlib import Path

KINDS = ("alloc", "free", "fork", "cow", "cache_hit", "evict", "swap_out", "swap_in",
         "offload", "load")
ALLOC, FREE, FORK, COW, CACHE_HIT, EVICT, SWAP_OUT, SWAP_IN, OFFLOAD, LOAD = range(len(KINDS))
#: Kinds every log's ``kind`` column lists as categories; the offload
#: tier's are listed only in logs that have some, so that the files of
#: runs without a tier stay byte-identical to those before it existed.
BASE_KINDS = 8


class EventLog:
    def __init__(self) -> None:
        self.step = 0
        self.steps: list[int] = []
        self.seqs: list[int | None] = []
        self.kinds: list[int] = []
        self.blocks: list[int] = []
        self.srcs: list[int | None] = []
        self._seq_rows: list[int] = []   # seq, request, group, parent (-1: none); flat

    def __len__(self) -> int:
        return len(self.kinds)

    def add(self, seq: int | None, kind: int, block: int, src: int | None = None) -> None:
        self.steps.append(self.step)
        self.seqs.append(seq)
        self.kinds.append(kind)
        self.blocks.append(block)
        self.srcs.append(src)

    def add_sequence(self, seq: int, request: int, group: int, parent: int | None = None) -> None:
        """Record which request (and group, and parent) a new sequence serves."""
        self._seq_rows += (seq, request, group, -1 if parent is None else parent)

    def sequences_dataframe(self):
        """The sequence map: ``seq, request, group, parent`` (parent nullable)."""
        import numpy as np
        import pandas as pd
        a = np.asarray(self._seq_rows, dtype=np.int64).reshape(-1, 4)
        return pd.DataFrame({
            "seq": a[:, 0], "request": a[:, 1], "group": a[:, 2],
            "parent": pd.arrays.IntegerArray(a[:, 3].copy(), a[:, 3] < 0),
        })

    def rows(self) -> list[tuple]:
        """(step, seq, kind name, block, src_block)."""
        return [(st, sq, KINDS[k], b, s)
                for st, sq, k, b, s in zip(self.steps, self.seqs, self.kinds, self.blocks, self.srcs)]

    def to_dataframe(self):
        import numpy as np
        import pandas as pd

        def nullable(xs):
            # None -> NaN in one C-level pass; ids are far below 2**53, so
            # the float round trip is exact
            a = np.asarray(xs, dtype=np.float64)
            missing = np.isnan(a)
            return pd.arrays.IntegerArray(np.where(missing, 0, a).astype(np.int64), missing)

        return pd.DataFrame({
            "step": np.asarray(self.steps, dtype=np.int64),
            "seq": nullable(self.seqs),
            "kind": pd.Categorical.from_codes(np.asarray(self.kinds, dtype=np.int8),
                                              categories=list(self._categories())),
            "block": np.asarray(self.blocks, dtype=np.int64),
            "src_block": nullable(self.srcs),
        })

    def _categories(self) -> tuple[str, ...]:
        if max(self.kinds, default=0) >= BASE_KINDS:
            return KINDS
        return KINDS[:BASE_KINDS]

    def write(self, path: str | Path) -> Path:
        """Write as .parquet or .csv (by suffix), atomically (tmp + rename)."""
        path = Path(path)
        df = self.to_dataframe()
        tmp = path.with_name(path.name + ".tmp")
        if path.suffix == ".parquet":
            df.to_parquet(tmp, index=False)
        elif path.suffix == ".csv":
            df.to_csv(tmp, index=False)
        else:
            raise ValueError(f"{path}: event log must end in .parquet or .csv")
        tmp.replace(path)
        return path
