"""page_keys: a page's key is equal exactly when the content up to the end of
its hash block is equal, so shared keys never claim different content."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pagesim.traces import Request, page_keys
from pagesim.traces.pages import MASK63, _POLY, combine, token_block_hashes


def naive_block_hashes(seq, size):
    """The chained polynomial hash, one Python int at a time (the reference)."""
    out, h = [], 0
    for i, tok in enumerate(seq):
        h = (h * _POLY + tok + 1) % (1 << 64)
        end = i + 1
        if end % size == 0 or end == len(seq):
            out.append(int(combine(h, end)))
    return tuple(out)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 3), max_size=70), min_size=1, max_size=5),
       st.integers(1, 20))
def test_token_block_hashes_match_the_sequential_definition(seqs, size):
    got = token_block_hashes(seqs, size)
    assert [tuple(g) for g in got] == [naive_block_hashes(s, size) for s in seqs]


sequences = st.lists(st.lists(st.integers(0, 1), min_size=1, max_size=60),
                     min_size=2, max_size=4)


@settings(max_examples=150, deadline=None)
@given(sequences, st.integers(1, 24), st.integers(1, 40))
def test_equal_keys_iff_equal_content_to_the_block_end(seqs, size, page):
    hashes = token_block_hashes(seqs, size)
    keys = [page_keys(h, size, len(s), page) for s, h in zip(seqs, hashes)]
    for s, k in zip(seqs, keys):
        assert len(k) == len(s) // page
        assert all(0 <= x <= int(MASK63) for x in k)
    for a, ka in zip(seqs, keys):
        for b, kb in zip(seqs, keys):
            for p in range(min(len(ka), len(kb))):
                end = (p + 1) * page
                j = (end - 1) // size
                ea, eb = min((j + 1) * size, len(a)), min((j + 1) * size, len(b))
                same_block = ea == eb and a[:ea] == b[:eb]
                assert (ka[p] == kb[p]) == same_block
                if ka[p] == kb[p]:
                    assert a[:end] == b[:end]      # never shares different content


@settings(max_examples=60, deadline=None)
@given(sequences, st.integers(1, 8), st.integers(1, 4))
def test_exact_sharing_when_pages_are_whole_blocks(seqs, size, multiple):
    page = size * multiple
    hashes = token_block_hashes(seqs, size)
    keys = [page_keys(h, size, len(s), page) for s, h in zip(seqs, hashes)]
    for a, ka in zip(seqs, keys):
        for b, kb in zip(seqs, keys):
            for p in range(min(len(ka), len(kb))):
                end = (p + 1) * page
                assert (ka[p] == kb[p]) == (a[:end] == b[:end])


def test_mooncake_blocks_to_pages_of_any_size():
    h = (11, 12, 13)                        # 512-token blocks, the last partial
    for page in (1, 7, 16, 100, 256):
        keys = page_keys(h, 512, 1100, page)
        assert len(keys) == 1100 // page
        assert len(set(keys)) == len(keys)
    k16 = page_keys(h, 512, 1100, 16)
    assert k16[:32] == page_keys((11,), 512, 512, 16)      # block 0 alone decides
    assert k16[:32] != page_keys((99,), 512, 512, 16)
    k100 = page_keys(h, 512, 1100, 100)
    assert k100[4] == int(combine(11, 500)) and k100[5] == int(combine(12, 88))


def test_page_keys_edges():
    assert page_keys((1, 2), 16, 0, 16) == []
    assert page_keys((1, 2), 16, 15, 16) == []
    with pytest.raises(ValueError, match="exceeds"):
        page_keys((1, 2), 16, 33, 16)
    with pytest.raises(ValueError):
        page_keys((1,), 16, 16, 0)


def test_request_page_keys_respect_what_the_hashes_cover():
    plain = Request(0, 0.0, 100, 10)
    assert plain.hashed_tokens == 0 and plain.page_keys(16) == []
    prompt_only = Request(0, 0.0, 40, 10, block_hashes=(1, 2, 3), hash_block_size=16)
    assert prompt_only.hashed_tokens == 40
    assert len(prompt_only.page_keys(16, num_tokens=50)) == 2   # clipped at 40 tokens
    with_output = Request(0, 0.0, 40, 30, block_hashes=(1, 2, 3, 4, 5), hash_block_size=16)
    assert with_output.hashed_tokens == 70
    assert len(with_output.page_keys(16)) == 4
