"""One step's inputs as the kernels want them, built from a StepPlan.

The model is token-wise everywhere except attention, so the executor may
order the step's tokens as it likes: decoding sequences (one new token
each) come first, then prefill sequences (several new tokens, possibly on
top of a cached prefix or of earlier chunks). Each kernel then takes one
contiguous slice of the packed rows, with no gather or scatter::

    rows   | d0 d1 d2 ... | p0 p0 p0 p0 | p1 p1 | ...
           | paged_decode | paged_prefill (cu_seqlens over these rows) |

All integer metadata is packed into one int32 host buffer and copied to the
device in one transfer, then viewed in 16-byte-aligned pieces.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from pagesim.gpu.tokens import TokenBook, slots_of
from pagesim.sim.plan import StepPlan

#: int32 elements per 16 bytes. Every piece of the packed metadata starts on a
#: 16-byte boundary: Triton specialises a kernel on its pointers' alignment, so
#: pieces at offsets that vary with the step's size would each compile new
#: kernel variants in the middle of a timed replay.
ALIGN = 4


@dataclass
class StepBatch:
    step: int
    seq_ids: list[int]            # packed order: decodes, then prefills
    starts: np.ndarray            # first new position of each sequence
    query_lens: np.ndarray
    context_lens: np.ndarray
    tables: list[list[int]]
    row0: np.ndarray              # first packed row of each sequence
    num_decode: int               # sequences (= rows) handled by paged_decode
    tokens: np.ndarray            # [num_tokens] token ids
    slots: np.ndarray             # [num_tokens] cache slots written
    dev: dict = field(default_factory=dict)  # device views, see ``to_device``
    dec_max_ctx: int = 0
    pre_max_q: int = 0
    graph: bool = False           # views into a graph's static buffers (gpu/graphs.py)

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    def to_device(self, device: torch.device) -> None:
        """Pack the metadata, copy it once, and keep named device views."""
        self.pack(device)
        self.upload()

    def pack(self, device: torch.device) -> None:
        """Host side of ``to_device``: the metadata in one (pinned) int32 buffer."""
        nd = self.num_decode
        q, ctx, starts = self.query_lens, self.context_lens, self.starts
        positions = np.concatenate([np.arange(s, c) for s, c in zip(starts, ctx)]) \
            if len(ctx) else np.zeros(0, np.int64)
        pre_q = q[nd:]
        parts = {
            "tokens": self.tokens, "positions": positions, "slots": self.slots,
            "dec_ctx": ctx[:nd], "dec_tables": _pad(self.tables[:nd]),
            "pre_cu": np.concatenate(([0], np.cumsum(pre_q))), "pre_ctx": ctx[nd:],
            "pre_tables": _pad(self.tables[nd:]), "last_rows": self.row0 + q - 1,
        }
        arrays = [np.asarray(a, dtype=np.int32) for a in parts.values()]
        sizes = [-(-a.size // ALIGN) * ALIGN for a in arrays]
        flat = np.zeros(sum(sizes), dtype=np.int32)
        offsets = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        for a, off in zip(arrays, offsets.tolist()):
            flat[off:off + a.size] = a.reshape(-1)
        host = torch.from_numpy(flat)
        if device.type == "cuda":
            host = host.pin_memory()
        self._packed = (device, host, [(name, a.shape, off) for name, a, off in zip(parts, arrays, offsets.tolist())])
        self.dec_max_ctx = int(ctx[:nd].max()) if nd else 0
        self.pre_max_q = int(pre_q.max()) if len(pre_q) else 0

    def upload(self) -> None:
        """Device side of ``to_device``: one copy, then the named views."""
        device, host, layout = self._packed
        buf = host.to(device, non_blocking=True)
        for name, shape, off in layout:
            n = int(np.prod(shape))
            self.dev[name] = buf[off:off + n].view(shape)


def _pad(tables: list[list[int]]) -> np.ndarray:
    """Block tables as one [n, widest] array; padding entries are never read."""
    width = max((len(t) for t in tables), default=0)
    out = np.zeros((len(tables), max(width, 1)), dtype=np.int32)
    for i, t in enumerate(tables):
        out[i, :len(t)] = t
    return out


def build_batch(plan: StepPlan, book: TokenBook, block_size: int) -> StepBatch:
    """Draw the plan's tokens from the book, compute the slots they write,
    and order the sequences decodes first.

    Tokens are drawn in plan order, writing each sequence's slots into the
    book before the next: a sequence admitted in this step may hit prefix
    blocks that an earlier sequence of the same step is filling (the
    allocator caches a block as soon as it is allocated full). That is
    sound on the GPU too: every layer stores all new K/V before attending.
    """
    q, ctx_all = plan.query_lens, plan.context_lens
    toks, slots = [], []
    for sid, table, n, c in zip(plan.seq_ids, plan.block_tables, q, ctx_all):
        toks.append(book.take(plan.step, sid, table, c - n, c))
        slots.append(slots_of(table, c - n, c, block_size))
        book.write(slots[-1], toks[-1])
    order = [i for i in range(len(q)) if q[i] == 1] + [i for i in range(len(q)) if q[i] != 1]
    qlens = np.array([q[i] for i in order], dtype=np.int64)
    ctx = np.array([ctx_all[i] for i in order], dtype=np.int64)
    tokens = np.concatenate([toks[i] for i in order]) if order else np.zeros(0, np.int64)
    slot_arr = np.concatenate([slots[i] for i in order]) if order else np.zeros(0, np.int64)
    row0 = np.concatenate(([0], np.cumsum(qlens)[:-1])) if order else np.zeros(0, np.int64)
    return StepBatch(plan.step, [plan.seq_ids[i] for i in order], ctx - qlens, qlens, ctx,
                     [plan.block_tables[i] for i in order], row0, sum(1 for x in q if x == 1),
                     tokens, slot_arr)
