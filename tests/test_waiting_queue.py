"""The waiting queue serves keys in exactly the order a binary heap would."""
import heapq

from hypothesis import given
from hypothesis import strategies as st

from pagesim.sim.waiting_queue import WaitingQueue


@given(st.lists(st.one_of(st.tuples(st.just("push"), st.integers(0, 50)), st.just(("pop", 0))),
                max_size=200))
def test_waiting_queue_pops_in_heap_order(ops):
    q, ref, gid = WaitingQueue(), [], 0
    for op, t in ops:
        if op == "push":
            key = (t, gid)  # unique keys, as the scheduler's end with the group id
            gid += 1
            q.push(key, key)
            heapq.heappush(ref, key)
        elif ref:
            assert q.head() == ref[0]
            assert q.pop() == heapq.heappop(ref)
        assert len(q) == len(ref) and bool(q) == bool(ref)
    assert [q.pop() for _ in range(len(q))] == sorted(ref)


def test_in_order_keys_never_touch_the_heap():
    q = WaitingQueue()
    for i in range(5):
        q.push((float(i), i), i)
    q.push((2.5, 9), "requeued")  # a preempted group going back
    assert q._heap == [((2.5, 9), "requeued")] and len(q._fifo) == 5
    assert [q.pop() for _ in range(6)] == [0, 1, 2, "requeued", 3, 4]
