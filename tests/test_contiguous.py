"""Buddy allocator and the Orca contiguous baselines."""
import random

import pytest

from pagesim.sim.buddy import BuddyAllocator, order_for
from pagesim.sim.contiguous import ContiguousKVCacheManager
from pagesim.sim.errors import InvalidArgument, OutOfBlocks, UnknownSequence
from pagesim.sim.invariants import check_split


def test_order_for():
    assert [order_for(x) for x in (1, 2, 3, 4, 5, 1024, 1025)] == [0, 1, 2, 2, 3, 10, 11]


def test_buddy_splits_and_merges_back():
    b = BuddyAllocator(16)
    x = b.alloc(3)            # 4 slots at 0
    y = b.alloc(4)            # 4 slots at 4
    z = b.alloc(8)            # 8 at 8
    assert (x, y, z) == (0, 4, 8) and b.free_slots == 0
    assert not b.can_alloc(1)
    b.free(y); b.free(x); b.free(z)
    assert b.free_lists[4] == [0] and b.free_slots == 16


def test_buddy_non_power_of_two_capacity_never_merges_across_top_chunks():
    b = BuddyAllocator(12)    # top chunks 8 @ 0 and 4 @ 8
    assert not b.can_alloc(9)
    offs = [b.alloc(4) for _ in range(3)]
    assert sorted(offs) == [0, 4, 8]
    for o in offs:
        b.free(o)
    assert b.free_lists[3] == [0] and b.free_lists[2] == [8]


def test_buddy_random_alloc_free_conserves_slots():
    rng = random.Random(0)
    b = BuddyAllocator(1000)
    live = {}
    for _ in range(2000):
        if live and rng.random() < 0.5:
            o = rng.choice(sorted(live))
            b.free(o)
            del live[o]
        else:
            size = rng.randint(1, 100)
            if b.can_alloc(size):
                o = b.alloc(size)
                assert o not in live
                live[o] = 1 << order_for(size)
    assert b.free_slots + sum(live.values()) == 1000
    spans = sorted((o, o + s) for o, s in live.items())
    assert all(a[1] <= c[0] for a, c in zip(spans, spans[1:])), "overlapping regions"


def test_buddy_errors():
    with pytest.raises(InvalidArgument):
        BuddyAllocator(0)
    b = BuddyAllocator(8)
    with pytest.raises(OutOfBlocks):
        b.alloc(9)
    with pytest.raises(InvalidArgument):
        b.free(3)


@pytest.mark.parametrize("placement", ["buddy", "first-fit"])
@pytest.mark.parametrize("policy,reserved", [("max", 2048), ("pow2", 100 + 256), ("oracle", 300)])
def test_orca_policies_reserve_as_defined(policy, reserved, placement):
    m = ContiguousKVCacheManager(8192, policy, max_model_len=2048, placement=placement)
    assert m.reservation(300, 100) == reserved   # 100 prompt + 200 output tokens
    m.allocate(1, 100, max_tokens=300, prompt_tokens=100)
    u = m.usage()
    assert u.token_states == 100
    assert u.reserved == 200                     # future tokens of the actual length
    assert u.internal_frag == reserved - 300     # over-reservation
    rounding = (1 << order_for(reserved)) - reserved if placement == "buddy" else 0
    assert u.external_frag == rounding  # buddy rounding; first fit places exact sizes
    check_split(u, 8192)
    m.append_slots(1, 200)
    assert m.usage().reserved == 0
    m.free(1)
    assert m.usage().free == 8192


def test_pending_request_makes_small_free_chunks_external():
    m = ContiguousKVCacheManager(3000, "max", max_model_len=2048)  # chunks 2048, 512, 256, ...
    m.allocate(1, 10, max_tokens=20)
    assert not m.can_allocate(10, max_tokens=20)
    u = m.usage(pending_tokens=(20, 10))
    assert u.free == 0 and u.external_frag == 3000 - 2048
    check_split(u, 3000)


def test_contiguous_errors_and_no_fork():
    m = ContiguousKVCacheManager(1024, "oracle", max_model_len=512)
    with pytest.raises(InvalidArgument):
        ContiguousKVCacheManager(1024, "best", max_model_len=512)
    with pytest.raises(UnknownSequence):
        m.free(1)
    m.allocate(1, 4, max_tokens=8)
    with pytest.raises(OutOfBlocks):
        m.append_slots(1, 5)
    assert m.num_tokens(1) == 4
    with pytest.raises(InvalidArgument):
        m.fork(1, 2)
