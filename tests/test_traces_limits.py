"""Trace readers refuse absurd numbers and read compressed files: each
error names file, line and field."""
from __future__ import annotations

import bz2
import gzip
import lzma

import pytest

from pagesim.traces import TraceError, load_trace

HUGE = "100000000000000000000000000000"   # 10**29: was cast to a negative int64

CASES = [
    ("a.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:00.0000000,10,1\n"
              f"2023-11-16 18:15:01.0000000,{HUGE},1\n", 3, "ContextTokens is 1e+29, too large"),
    ("v.csv", f"arrived_at,num_prefill_tokens,num_decode_tokens\n0,5,1\n1,5,{HUGE}\n", 3,
     "num_decode_tokens is 1e+29, too large"),
    ("v.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n0,5,1\n1e300,5,1\n", 3,
     "arrived_at is 1e+300, too large"),
    ("m.jsonl", '{"timestamp": 0, "input_length": 5, "output_length": 1}\n\n'
                '{"timestamp": 1e300, "input_length": 5, "output_length": 1}\n', 3,
     "timestamp is 1e+300, too large"),
    ("m.jsonl", f'{{"timestamp": 0, "input_length": {HUGE}, "output_length": 1}}\n', 1,
     "input_length is 1e+29, too large"),
    ("t.jsonl", f'{{"arrival_time_ns": {HUGE}, "input_toks": 2, "output_toks": 1, '
                '"input_tok_ids": [1, 2]}\n', 1, "arrival_time_ns is 1e+29, too large"),
    ("p.csv", f"arrival_s,prompt_tokens,output_tokens\n0,5,1\n2,{HUGE},1\n", 3,
     "prompt_tokens is 1e+29, too large"),
    ("p.csv", "arrival_s,prompt_tokens,output_tokens\n0,5,1\n1e300,5,1\n", 3,
     "arrival_s is 1e+300, too large"),
]


@pytest.mark.parametrize("name,text,line,problem", CASES)
def test_absurd_numbers_refused_at_their_line(tmp_path, name, text, line, problem):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(TraceError) as info:
        load_trace(path)
    assert (info.value.path, info.value.line) == (str(path), line)
    assert info.value.problem.startswith(problem), info.value.problem


def test_largest_allowed_values_still_load(tmp_path):
    path = tmp_path / "v.csv"
    path.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n"
                    f"0,5,1\n{2**32},{2**31 - 1},0\n")
    t = load_trace(path)
    assert t.prompt_tokens.tolist() == [5, 2**31 - 1] and t.arrival_s[-1] == 2**32


MOONCAKE = ('{"timestamp": 0, "input_length": 5, "output_length": 1}\n'
            '{"timestamp": 1500, "input_length": 7, "output_length": 2}\n')
AZURE = ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:00.0000000,100,10\n"
         "2023-11-16 18:15:02.0000000,300,30\n")


@pytest.mark.parametrize("opener", [gzip.open, bz2.open, lzma.open])
@pytest.mark.parametrize("text,fmt", [(MOONCAKE, "mooncake"), (AZURE, "azure")])
def test_compressed_files_read_by_magic_bytes(tmp_path, opener, text, fmt):
    plain = tmp_path / "plain"
    plain.write_text(text)
    packed = tmp_path / "renamed.txt"     # the name says nothing
    with opener(packed, "wt") as f:
        f.write(text)
    got, want = load_trace(packed), load_trace(plain)
    assert got.meta["format"] == fmt
    assert got.to_dataframe().equals(want.to_dataframe())


def test_damaged_gzip_and_unread_compressions_are_named(tmp_path):
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(gzip.compress(MOONCAKE.encode() * 50)[:40])
    with pytest.raises(TraceError, match="cannot decompress"):
        load_trace(cut)
    zst = tmp_path / "t.csv"
    zst.write_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 20)
    with pytest.raises(TraceError, match=r"zstd-compressed.*zstd -d"):
        load_trace(zst)


def test_unsorted_message_offers_sort(tmp_path):
    path = tmp_path / "v.csv"
    path.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n2,5,1\n1,5,1\n")
    with pytest.raises(TraceError, match=r"line 3: arrived_at out of order.*--sort"):
        load_trace(path)
    assert load_trace(path, sort=True).column("id").tolist() == [1, 0]
