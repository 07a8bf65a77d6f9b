"""Offline cacheability (``trace stats --block-sizes``): reuse against block
size and LRU cache size, checked against counts made by hand."""
import pytest

from pagesim import traces
from pagesim.trace_cli import main
from pagesim.traces.cacheability import cacheability, lru_hits


def test_shared_system_prompt_reuse_by_block_size():
    # 200 shared tokens: block 16 and 64 share 192 tokens (12 and 3 full
    # pages), block 128 shares 128; every request after the first reuses them.
    t = traces.synthetic("sharegpt", num_requests=50, rate=10, system_prompt_tokens=200, seed=0)
    rows = cacheability(t, [16, 64, 128])
    total = int(t.prompt_tokens.sum())
    got = {r["block_size"]: r["token_reuse"] for r in rows}
    assert got[16] == pytest.approx(49 * 192 / total)
    assert got[64] == pytest.approx(49 * 192 / total)
    assert got[128] == pytest.approx(49 * 128 / total)


def test_lru_by_hand():
    a, b, c, d = 1, 2, 3, 4
    # capacity 2: [a b] miss; [a b] hits 2; [c d] evicts a, b; [a b] misses
    assert lru_hits([[a, b], [a, b], [c, d], [a, b]], 2) == 2
    # capacity 4 keeps all: 2 + 2 hits
    assert lru_hits([[a, b], [a, b], [c, d], [a, b]], 4) == 4
    # capacity 3: d evicts a; [b] alone hits 1; then [a, b] has a evicted,
    # and only the leading run counts, so the cached b is no hit
    assert lru_hits([[a, b], [c], [d], [b], [a, b]], 3) == 1


def test_no_content_gives_none():
    t = traces.synthetic("sharegpt", num_requests=5, rate=10, seed=0)
    plain = traces.Trace.from_frame(t.to_dataframe().assign(block_hashes=None), "x", {})
    assert cacheability(plain, [16]) is None


def test_cli_block_sizes(tmp_path, capsys):
    path = tmp_path / "t.parquet"
    traces.synthetic("sharegpt", num_requests=20, rate=10, system_prompt_tokens=64, seed=0).save(path)
    assert main(["trace", "stats", str(path), "--block-sizes", "16,32", "--cache-sizes", "auto"]) == 0
    out = capsys.readouterr().out
    assert "block 16" in out and "block 32" in out and "unlimited" in out
    assert main(["trace", "stats", str(path), "--block-sizes", "16,0"]) == 2
    assert "--block-sizes" in capsys.readouterr().err
