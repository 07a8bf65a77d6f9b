"""Conformance of the paged manager's pool with vLLM 0.33.0's own BlockPool.

Optional (skipped unless ``PAGESIM_VLLM_SITE`` names an unpacked vllm
0.33.0 wheel, see ``vllm_stub.py``). The same random streams of allocate /
append / free drive pagesim's ``PagedKVCacheManager`` (built as ``replay``
builds it under ``--vllm 0.33``) and vLLM's ``BlockPool`` through a minimal
request-level driver written here (hits, touch, new blocks, caching of
newly full blocks, tail-first frees, as vLLM's single-type manager does).
After every operation the block tables, the free queue (ids, in eviction
order), the cache hits and the block each hash resolves to must agree.
"""
import os
import random
import types

import pytest

from pagesim.sim.allocators import make_kv_cache_manager
from pagesim.sim.block_keys import BlockKeys
from pagesim.sim.config import SchedulerConfig

SITE = os.environ.get("PAGESIM_VLLM_SITE")
pytestmark = pytest.mark.skipif(not SITE, reason="set PAGESIM_VLLM_SITE to an unpacked vllm wheel")

PREFIXES = [tuple(range(0, 40)), tuple(range(0, 20)) + tuple(range(100, 120)), tuple(range(200, 240))]


def cdiv(a, b):
    return -(-a // b)


class VllmSide:
    """vLLM's BlockPool behind the request-level calls pagesim makes."""

    def __init__(self, bp, utils, num_blocks, bs, caching):
        self.pool = bp.BlockPool(num_blocks, enable_caching=caching, hash_block_size=bs)
        self.group = utils.make_block_hash_with_group_id
        self.bs, self.caching = bs, caching
        self.seqs = {}

    def can_allocate(self, n, hashes):
        hits = self._hits(n, hashes)
        need = cdiv(n, self.bs) - len(hits) + sum(1 for b in hits if b.ref_cnt == 0)
        return need <= self.pool.get_num_free_blocks()

    def _hits(self, n, hashes):
        if not self.caching:
            return []
        hits = []
        for h in hashes[: (n - 1) // self.bs]:
            got = self.pool.get_cached_block(h, [0])
            if got is None:
                break
            hits.append(got[0])
        return hits

    def allocate(self, sid, n, hashes):
        hits = self._hits(n, hashes)
        self.pool.touch(hits)
        table = hits + self.pool.get_new_blocks(cdiv(n, self.bs) - len(hits))
        req = types.SimpleNamespace(block_hashes=hashes)
        self.seqs[sid] = [table, n, len(hits), req]
        self._cache(sid)
        return len(hits) * self.bs

    def _cache(self, sid):
        table, n, cached, req = self.seqs[sid]
        if self.caching:
            self.pool.cache_full_blocks(req, table, cached, n // self.bs, self.bs, 0)
            self.seqs[sid][2] = max(cached, n // self.bs)

    def can_append(self, sid, k):
        table, n, _, _ = self.seqs[sid]
        return cdiv(n + k, self.bs) - len(table) <= self.pool.get_num_free_blocks()

    def append(self, sid, k):
        s = self.seqs[sid]
        s[0] += self.pool.get_new_blocks(cdiv(s[1] + k, self.bs) - len(s[0]))
        s[1] += k
        self._cache(sid)

    def free(self, sid):
        table = self.seqs.pop(sid)[0]
        self.pool.free_blocks(reversed(table))

    def free_ids(self):
        return [b.block_id for b in self.pool.free_block_queue.get_all_free_blocks()]

    def lookup(self, h):
        got = self.pool.get_cached_block(h, [0])
        return None if got is None else got[0].block_id


def stream(seed, bp, utils):
    rng = random.Random(seed)
    bs = rng.choice([1, 2, 4])
    num_blocks = rng.randint(3, 20)
    caching = rng.random() < 0.8
    ours = make_kv_cache_manager("paged", num_blocks=num_blocks, block_size=bs, max_model_len=4096,
                                 enable_prefix_caching=caching, config=SchedulerConfig(vllm="0.33"))
    theirs = VllmSide(bp, utils, num_blocks, bs, caching)
    tokens = {}
    seen = set()
    for op in range(80):
        live = sorted(theirs.seqs)
        r = rng.random()
        if r < 0.4 or not live:
            sid = op
            toks = PREFIXES[rng.randrange(3)][: rng.randint(1, 40)] + tuple(range(1000 + op, 1010 + op))
            keys = BlockKeys(bs, token_ids=toks)
            hs = [keys.key(i).to_bytes(9, "big", signed=True) for i in range(keys.known_blocks)]
            n = rng.randint(1, len(toks) - 10)
            ok = ours.can_allocate(n, keys)
            assert ok == theirs.can_allocate(n, hs), f"seed {seed} op {op}: can_allocate differs"
            if ok:
                tokens[sid] = len(toks)
                seen.update(zip(hs, (keys.key(i) for i in range(len(hs)))))
                assert ours.allocate(sid, n, keys) == theirs.allocate(sid, n, hs), (
                    f"seed {seed} op {op}: cache hits differ")
        elif r < 0.75:
            sid = rng.choice(live)
            k = rng.randint(1, 2 * bs)
            k = min(k, tokens[sid] - theirs.seqs[sid][1])  # stay within the known tokens
            if k <= 0:
                continue
            ok = ours.can_append(sid, k)
            assert ok == theirs.can_append(sid, k), f"seed {seed} op {op}: can_append differs"
            if ok:
                ours.append_slots(sid, k)
                theirs.append(sid, k)
        else:
            sid = rng.choice(live)
            ours.free(sid)
            theirs.free(sid)
        for sid in theirs.seqs:
            assert ours.block_table(sid) == [b.block_id for b in theirs.seqs[sid][0]], (
                f"seed {seed} op {op}: block table of {sid} differs")
        assert ours.pool.free_queue.ids() == theirs.free_ids(), f"seed {seed} op {op}: free queue differs"
        for h_bytes, h in seen:
            mine = ours.pool.lookup(h)
            assert (mine.id if mine else None) == theirs.lookup(h_bytes), (
                f"seed {seed} op {op}: a hash resolves to different blocks")


@pytest.fixture(scope="module")
def vllm_modules():
    from tests.conformance.vllm_stub import load_block_pool
    return load_block_pool(SITE)


@pytest.mark.parametrize("seed", range(int(os.environ.get("PAGESIM_VLLM_STREAMS", "300"))))
def test_pool_matches_vllm_0_33(seed, vllm_modules):
    stream(seed, *vllm_modules)
