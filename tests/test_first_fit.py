"""First-fit placement of contiguous regions on exact sizes."""
import random

import pytest

from pagesim.sim.contiguous import ContiguousKVCacheManager
from pagesim.sim.errors import InvalidArgument, OutOfBlocks
from pagesim.sim.first_fit import FirstFitAllocator


def test_lowest_hole_that_fits_and_merging_on_free():
    a = FirstFitAllocator(100)
    assert [a.alloc(s) for s in (30, 20, 50)] == [0, 30, 50]
    a.free(0)
    a.free(50)
    assert a.alloc(40) == 50            # the 30-slot hole at 0 is too small
    assert a.alloc(25) == 0             # first fit, not best fit
    a.free(30)                          # merges with the 5-slot hole at 25
    assert a.largest_free() == 25 and a.free_in_chunks_smaller_than(26) == 35
    with pytest.raises(OutOfBlocks):
        a.alloc(26)
    with pytest.raises(InvalidArgument):
        a.free(7)


def test_random_allocations_never_overlap_and_free_space_recombines():
    rng = random.Random(0)
    a = FirstFitAllocator(1000)
    live = {}
    for _ in range(2000):
        if live and rng.random() < 0.45:
            off = rng.choice(sorted(live))
            a.free(off)
            del live[off]
        else:
            size = rng.randint(1, 120)
            if a.can_alloc(size):
                live[a.alloc(size)] = size
            else:
                with pytest.raises(OutOfBlocks):
                    a.alloc(size)
        spans = sorted(live.items())
        assert all(o1 + s1 <= o2 for (o1, s1), (o2, _) in zip(spans, spans[1:])), "regions overlap"
        assert a.free_slots == 1000 - sum(live.values())
        assert sum(a._size.values()) == a.free_slots, "holes do not add up to the free slots"
    for off in list(live):
        a.free(off)
    assert a.largest_free() == 1000


def test_oracle_reserves_exactly_with_first_fit_and_pow2_rounds_up():
    oracle = ContiguousKVCacheManager(1000, "oracle", max_model_len=512, placement="first-fit")
    pow2 = ContiguousKVCacheManager(1000, "pow2", max_model_len=512, placement="first-fit")
    for m in (oracle, pow2):
        for sid in range(3):
            if m.can_allocate(10, max_tokens=300):
                m.allocate(sid, 10, max_tokens=300)
    # 3 x 300 fit in 1000 exactly; 3 x 512 do not
    assert len(oracle.seqs) == 3 and len(pow2.seqs) == 1
    assert oracle.usage().external_frag == 0
