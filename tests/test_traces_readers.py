"""Each reader on a small file the test writes itself, format detection, and
the canonical format's exact round trip."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from pagesim import traces
from pagesim.traces import Request, Trace, load_trace


def write(path, text):
    path.write_text(text)
    return path


AZURE = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:46.6805900,374,44
2023-11-16 18:15:50.9951690,396,109
2023-11-16 18:15:50.9951690,1000,7
2023-11-16 18:16:00.0000001,2,1
"""


def test_azure(tmp_path):
    t = load_trace(write(tmp_path / "a.csv", AZURE))
    assert len(t) == 4 and t.meta["format"] == "azure"
    assert t.arrival_s[0] == 0.0
    assert t.arrival_s[1] == pytest.approx(4.314579)
    assert t.arrival_s[3] == pytest.approx(13.3194101, abs=1e-9)  # 7th digit kept
    assert t.prompt_tokens.tolist() == [374, 396, 1000, 2]
    assert t.output_tokens.tolist() == [44, 109, 7, 1]
    assert [r.id for r in t] == [0, 1, 2, 3]
    assert t[0].block_hashes is None and t[0].hash_block_size is None
    assert t.meta["time_origin"].startswith("2023-11-16 18:15:46.68059")


def test_azure_2024_timestamps_with_utc_offset(tmp_path):
    text = ("TIMESTAMP,ContextTokens,GeneratedTokens\n"
            "2024-05-10 00:00:00.009930+00:00,10,2\n"
            "2024-05-10 00:00:01.509930+00:00,20,3\n")
    t = load_trace(write(tmp_path / "a24.csv", text))
    assert t.arrival_s.tolist() == pytest.approx([0.0, 1.5])


def mooncake_lines():
    rows = [
        {"timestamp": 0, "input_length": 1000, "output_length": 10, "hash_ids": [0, 1]},
        {"timestamp": 0, "input_length": 1100, "output_length": 5, "hash_ids": [0, 1, 2]},
        {"timestamp": 3000, "input_length": 512, "output_length": 1, "hash_ids": [0]},
        {"timestamp": 6000, "input_length": 30, "output_length": 8, "hash_ids": [7]},
    ]
    return "\n".join(json.dumps(r) for r in rows) + "\n"


def test_mooncake(tmp_path):
    t = load_trace(write(tmp_path / "m.jsonl", mooncake_lines()))
    assert t.meta["format"] == "mooncake" and len(t) == 4
    assert t.arrival_s.tolist() == [0.0, 0.0, 3.0, 6.0]
    assert t[1].block_hashes == (0, 1, 2) and t[1].hash_block_size == 512
    assert t[0].hashed_tokens == 1000
    # Requests 0 and 1 share block 0 entirely: 32 pages of 16 tokens.
    k0, k1 = t[0].page_keys(16), t[1].page_keys(16)
    assert len(k0) == 1000 // 16 and len(k1) == 1100 // 16
    assert k0[:32] == k1[:32] and k0[32] == k1[32]  # hash id 1 is shared too
    s = traces.trace_stats(t)["prefix_reuse"]
    assert s == {"block_tokens": [512], "references": 7, "unique_blocks": 4,
                 "reuse_ratio": pytest.approx(3 / 7)}


def test_mooncake_without_hash_ids(tmp_path):
    text = '{"timestamp": 5, "input_length": 10, "output_length": 2}\n'
    t = load_trace(write(tmp_path / "m.jsonl", text))
    assert t[0].block_hashes is None and t[0].hash_block_size is None
    assert t.arrival_s.tolist() == [0.005]


def test_lengths_need_an_arrival_process(tmp_path):
    text = "num_prefill_tokens,num_decode_tokens,num_total_tokens,pd_ratio\n5,7,12,0.7\n9,1,10,9\n"
    path = write(tmp_path / "l.csv", text)
    with pytest.raises(traces.TraceError, match="no arrival times") as err:
        load_trace(path)
    assert err.value.line is None
    t = load_trace(path, arrival=2.0, seed=1)
    assert t.meta["format"] == "lengths" and t.meta["arrival"] == "Poisson(rate=2.0)"
    assert t.prompt_tokens.tolist() == [5, 9] and t.output_tokens.tolist() == [7, 1]
    assert 0 < t.arrival_s[0] <= t.arrival_s[1]
    assert load_trace(path, arrival=2.0, seed=1) == t
    assert load_trace(path, arrival=2.0, seed=2) != t


def test_vidur(tmp_path):
    text = "arrived_at,num_prefill_tokens,num_decode_tokens\n0.5,100,20\n0.75,200,1\n"
    t = load_trace(write(tmp_path / "v.csv", text))
    assert t.meta["format"] == "vidur"
    assert t.arrival_s.tolist() == [0.5, 0.75]  # kept as given
    assert t.prompt_tokens.tolist() == [100, 200]


def token_lines():
    base = 1_700_000_000_123_456_789
    rows = [
        {"arrival_time_ns": base, "input_toks": 20, "output_toks": 13,
         "input_tok_ids": list(range(20)), "output_tok_ids": [7, 8, 9] + [5] * 10},
        {"arrival_time_ns": base + 1, "input_toks": 40, "output_toks": 2,
         "input_tok_ids": list(range(16)) + [99] * 24, "output_tok_ids": [1, 2]},
        {"arrival_time_ns": base + 2_000_000_000, "input_toks": 33, "output_toks": 1,
         "input_tok_ids": list(range(20)) + [7, 8, 9] + [5] * 10},
    ]
    return "\n".join(json.dumps(r) for r in rows) + "\n"


def test_token_ids(tmp_path):
    t = load_trace(write(tmp_path / "tok.jsonl", token_lines()))
    assert t.meta["format"] == "tokens"
    assert t.arrival_s.tolist() == [0.0, 1e-9, 2.0]   # integer ns kept exact
    r0, r1, r2 = t.requests
    assert r0.prompt_token_ids == tuple(range(20)) and r0.output_token_ids[:3] == (7, 8, 9)
    assert r2.output_token_ids is None
    # r0's hashes go on over its answer; r2's prompt is r0's prompt + answer
    # (a next turn), so all three blocks and all four 8-token pages match.
    assert r0.hash_block_size == 16 and len(r0.block_hashes) == 3
    assert r0.hashed_tokens == 33 and r2.hashed_tokens == 33
    assert r0.block_hashes == r2.block_hashes
    assert r0.block_hashes[0] == r1.block_hashes[0] != r1.block_hashes[1]
    assert r0.page_keys(8) == r2.page_keys(8) and len(r0.page_keys(8)) == 4
    assert r0.page_keys(8, num_tokens=20) == r0.page_keys(8)[:2]
    reuse = traces.prefix_reuse(t)    # full 16-token prompt blocks: 1 + 2 + 2
    assert reuse["references"] == 5 and reuse["unique_blocks"] == 3


def test_format_detection(tmp_path):
    cases = {
        "a.csv": AZURE,
        "m.jsonl": mooncake_lines(),
        "t.jsonl": token_lines(),
        "v.csv": "arrived_at,num_prefill_tokens,num_decode_tokens\n1,2,3\n",
        "l.csv": "num_prefill_tokens,num_decode_tokens\n1,2\n",
        "c.csv": "arrival_s,prompt_tokens,output_tokens\n0.0,3,4\n",
    }
    want = ["azure", "mooncake", "tokens", "vidur", "lengths", "pagesim"]
    for (name, text), fmt in zip(cases.items(), want):
        assert traces.detect_format(write(tmp_path / name, text)) == fmt


def test_explicit_format_overrides_detection(tmp_path):
    path = write(tmp_path / "v.txt", "arrived_at,num_prefill_tokens,num_decode_tokens\n1,2,3\n")
    assert load_trace(path, "vidur").meta["format"] == "vidur"
    with pytest.raises(ValueError, match="unknown trace format"):
        load_trace(path, "nope")


def rich_trace() -> Trace:
    rng = np.random.default_rng(3)
    reqs = []
    for i in range(6):
        p = int(rng.integers(1, 40))
        o = int(rng.integers(0, 5))
        reqs.append(Request(
            id=10 * i + 1, arrival_s=float(rng.random() * 1e3 / 7), prompt_tokens=p,
            output_tokens=o,
            prompt_token_ids=tuple(int(x) for x in rng.integers(0, 32000, p)) if i % 2 else None,
            output_token_ids=tuple(range(o)) if i % 3 == 0 else None,
            block_hashes=tuple(int(x) for x in rng.integers(0, 2**63 - 1, -(-p // 16)))
            if i != 4 else None,
            hash_block_size=16 if i != 4 else None, n=1 + i % 2, beam_width=1 + i % 3,
            priority=i - 3, session_id=i // 2 if i != 5 else None))
    return Trace(reqs, source="unit test", meta={"seed": 3, "note": "ünïcode", "x": [1, 2.5]})


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_canonical_round_trip_is_exact(tmp_path, suffix):
    t = rich_trace()
    path = tmp_path / f"t{suffix}"
    t.save(path)
    back = load_trace(path)
    assert back == t
    assert back.requests == t.requests
    assert back.source == "unit test" and back.meta == t.meta


def test_trace_orders_by_arrival_and_keeps_ties_in_order():
    reqs = [Request(0, 2.0, 1, 1), Request(1, 1.0, 1, 1), Request(2, 2.0, 1, 1)]
    t = Trace(reqs)
    assert [r.id for r in t] == [1, 0, 2]
    assert len(t) == 3 and t[0].id == 1 and isinstance(t[1:], Trace) and len(t[1:]) == 2


def test_dataframe_round_trip_and_defaults():
    df = pd.DataFrame({"arrival_s": [0.0, 1.5], "prompt_tokens": [3, 4],
                       "output_tokens": [1, 0]})
    t = Trace.from_dataframe(df, source="df")
    r = t[1]
    assert (r.id, r.n, r.beam_width, r.priority, r.session_id) == (1, 1, 1, 0, None)
    assert Trace.from_dataframe(t.to_dataframe(), source="df") == t
    with pytest.raises(traces.TraceError, match="row 2: negative prompt_tokens"):
        Trace.from_dataframe(df.assign(prompt_tokens=[3, -4]), source="df")


def test_trace_helpers():
    t = traces.synthetic(num_requests=50, rate=5.0, seed=1)
    assert t.duration_s == pytest.approx(t.arrival_s[-1] - t.arrival_s[0])
    assert len(t.select(t.prompt_tokens > 100)) == int((t.prompt_tokens > 100).sum())
    moved = t.with_arrivals(t.arrival_s[::-1].copy())
    assert (np.diff(moved.arrival_s) >= 0).all()
    assert "50 requests" in repr(t)
    with pytest.raises(ValueError):
        t.arrival_s[0] = 1.0     # read-only view
    assert not math.isnan(t.duration_s)


def test_arrival_spec_replaces_the_file_times(tmp_path):
    path = write(tmp_path / "a.csv", AZURE)
    t = load_trace(path, arrival=lambda n, rng: np.arange(n, 0, -1) * 1.0)
    assert [r.id for r in t] == [3, 2, 1, 0]     # rows got 4, 3, 2, 1 s
    assert "arrival" in t.meta and t.meta["format"] == "azure"


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_synthetic_traces_round_trip(tmp_path, suffix):
    for t in (traces.synthetic(num_requests=30, rate=3.0),
              traces.synthetic(num_requests=30, rate=3.0, turns=2, few_shot="one-shot")):
        t.save(tmp_path / f"s{suffix}")
        assert load_trace(tmp_path / f"s{suffix}") == t


def test_byte_order_mark_is_ignored(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + AZURE.encode())
    assert len(load_trace(path)) == 4


def test_csv_floats_round_trip_exactly(tmp_path):
    rng = np.random.default_rng(11)
    times = np.sort(np.concatenate([rng.random(2000) * 1e4, rng.random(2000) * 1e-3,
                                    [0.1, 1 / 3, 2 / 3, 1e-300, 5e-324]]))
    t = Trace.from_dataframe(pd.DataFrame({"arrival_s": times, "prompt_tokens": 1,
                                           "output_tokens": 1}))
    t.save(tmp_path / "f.csv")
    assert load_trace(tmp_path / "f.csv").arrival_s.tolist() == t.arrival_s.tolist()
