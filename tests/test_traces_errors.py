"""Every bad-input case raises TraceError naming the file, line and problem;
too-long requests are rejected, truncated or refused, never silently."""
from __future__ import annotations

import json
import pickle
import warnings

import pandas as pd
import pytest

from pagesim import traces
from pagesim.traces import Request, Trace, TraceError, TraceWarning, load_trace

HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def azure(*rows: str) -> str:
    """A header and rows; unfilled rows are good ones 1 s apart."""
    return HEADER + "".join(r + "\n" for r in rows)


def good(i: int) -> str:
    return f"2023-11-16 18:15:{i:02d}.0000000,100,10"


def raises(tmp_path, text, name="x.csv", **kw) -> TraceError:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(TraceError) as err:
        load_trace(path, **kw)
    assert err.value.path == str(path)
    return err.value


def test_message_format_matches_the_documented_example(tmp_path):
    rows = [good(i) for i in range(5)] + ["2023-11-16 18:15:05.0000000,-3,10"]
    err = raises(tmp_path, azure(*rows))
    assert (err.line, err.problem) == (7, "negative ContextTokens (-3)")
    assert str(err) == f"{tmp_path / 'x.csv'}, line 7: negative ContextTokens (-3)"
    assert isinstance(err, ValueError)
    again = pickle.loads(pickle.dumps(err))
    assert (again.path, again.line, again.problem) == (err.path, err.line, err.problem)


@pytest.mark.parametrize("bad_row, line, problem", [
    ("2023-11-16 18:15:09.0000000,abc,10", 4, "non-numeric ContextTokens ('abc')"),
    ("2023-11-16 18:15:09.0000000,12,", 4, "missing or NaN GeneratedTokens"),
    ("2023-11-16 18:15:09.0000000,NaN,3", 4, "missing or NaN ContextTokens"),
    ("2023-11-16 18:15:09.0000000,3.5,3", 4, "non-integer ContextTokens (3.5)"),
    ("2023-11-16 18:15:09.0000000,12,-1", 4, "negative GeneratedTokens (-1)"),
    ("2023-11-16 18:15:09.0000000,0,3", 4, "ContextTokens is 0; it must be at least 1"),
    ("2023-11-16 18:15:09.0000000,inf,3", 4, "infinite ContextTokens"),
    ("16/11/2023 18:15,12,3", 4, "unparseable TIMESTAMP ('16/11/2023 18:15'; expected "
                                 "YYYY-MM-DD HH:MM:SS.fffffff)"),
    (",12,3", 4, "missing TIMESTAMP"),
    ("2023-11-16 18:15:09.0000000,12,3,4", 4, "expected 3 fields, saw 4"),
    ("", 4, "blank line"),
])
def test_bad_azure_cells(tmp_path, bad_row, line, problem):
    text = azure(good(0), good(1), bad_row, good(10), good(11))
    err = raises(tmp_path, text)
    assert (err.line, err.problem) == (line, problem)


def test_first_problem_in_file_order_wins(tmp_path):
    text = azure(good(0), "2023-11-16 18:15:01.0000000,5,-1", "bad time,-5,x")
    assert raises(tmp_path, text).line == 3


def test_missing_column(tmp_path):
    err = raises(tmp_path, "TIMESTAMP,ContextTokens\n2023-11-16 18:15:00.0000000,5\n")
    assert err.line == 1
    assert err.problem == ("missing column 'GeneratedTokens' "
                           "(found: TIMESTAMP, ContextTokens)")


def test_timestamps_out_of_order_or_sorted_on_request(tmp_path):
    text = azure(good(0), good(5), good(3), good(6))
    err = raises(tmp_path, text)
    assert err.line == 4
    assert err.problem.startswith("TIMESTAMP out of order: 2023-11-16 18:15:03.0000000 "
                                  "comes after 2023-11-16 18:15:05.0000000")
    assert "sort=True" in err.problem
    t = load_trace(tmp_path / "x.csv", sort=True)
    assert t.arrival_s.tolist() == [0.0, 3.0, 5.0, 6.0]
    assert [r.id for r in t] == [0, 2, 1, 3]     # ids are file rows
    assert t.meta["sorted_rows"] == 2


@pytest.mark.parametrize("text, problem", [
    ("", "empty file"),
    ("\n  \n", "empty file"),
    (HEADER, "no requests: the file has a header but no rows"),
])
def test_empty_files(tmp_path, text, problem):
    err = raises(tmp_path, text)
    assert (err.line, err.problem) == (None, problem)


def test_unrecognised_header(tmp_path):
    err = raises(tmp_path, "a,b,c\n1,2,3\n")
    assert err.line == 1 and err.problem.startswith("unrecognised header 'a,b,c'")


def test_trailing_blank_lines_are_fine(tmp_path):
    path = tmp_path / "ok.csv"
    path.write_text(azure(good(0), good(1)) + "\n\n")
    assert len(load_trace(path)) == 2


def moon(**kw) -> str:
    row = {"timestamp": 0, "input_length": 600, "output_length": 5, "hash_ids": [1, 2]}
    row.update(kw)
    return json.dumps({k: v for k, v in row.items() if v is not ...})


@pytest.mark.parametrize("bad, problem", [
    ('{"timestamp": 0, "input_length": 600,, }', "JSON syntax error: Expecting property "
                                                 "name enclosed in double quotes (column 38)"),
    (moon(hash_ids=[1, 2, 3]), "hash_ids has 3 ids but input_length 600 needs "
                               "ceil(600/512) = 2"),
    (moon(input_length=1025), "hash_ids has 2 ids but input_length 1025 needs "
                              "ceil(1025/512) = 3"),
    (moon(input_length=...), "missing or NaN input_length"),
    (moon(output_length=-2), "negative output_length (-2)"),
    (moon(input_length="many"), "non-numeric input_length ('many')"),
    (moon(hash_ids=[1, "x"]), "hash_ids must hold integers from 0 to 2**63-1"),
    (moon(hash_ids=7), "hash_ids is not a list (7)"),
    ("[1, 2]", "expected a JSON object, got list"),
    (moon(timestamp=-1), "negative timestamp (-1)"),
])
def test_bad_mooncake_lines(tmp_path, bad, problem):
    text = "\n".join([moon(), moon(timestamp=3000), "", bad, moon(timestamp=9000)])
    err = raises(tmp_path, text, name="m.jsonl", fmt="mooncake")
    assert (err.line, err.problem) == (4, problem)


def test_mooncake_out_of_order_and_empty(tmp_path):
    err = raises(tmp_path, "\n".join([moon(timestamp=3000), moon(timestamp=0)]), "m.jsonl")
    assert err.line == 2 and err.problem.startswith("timestamp out of order: 0 comes after 3000")
    assert raises(tmp_path, "\n\n", "m.jsonl", fmt="mooncake").problem == "empty file"


def test_json_syntax_error_on_the_first_line_is_found_by_detection(tmp_path):
    err = raises(tmp_path, '{"timestamp": 0,\n', "m.jsonl")
    assert err.line == 1 and err.problem.startswith("JSON syntax error")


def tok(**kw) -> str:
    row = {"arrival_time_ns": 10, "input_toks": 3, "output_toks": 2,
           "input_tok_ids": [1, 2, 3], "output_tok_ids": [4, 5]}
    row.update(kw)
    return json.dumps({k: v for k, v in row.items() if v is not ...})


@pytest.mark.parametrize("bad, problem", [
    (tok(input_toks=4), "input_tok_ids has 3 ids but input_toks is 4"),
    (tok(output_tok_ids=[1]), "output_tok_ids has 1 ids but output_toks is 2"),
    (tok(input_tok_ids=...), "missing input_tok_ids"),
    (tok(input_tok_ids=[1, -2, 3]), "input_tok_ids must hold integers from 0 to 2**63-1"),
])
def test_bad_token_lines(tmp_path, bad, problem):
    err = raises(tmp_path, "\n".join([tok(), bad]), name="t.jsonl")
    assert (err.line, err.problem) == (2, problem)


def test_bad_vidur_and_lengths(tmp_path):
    err = raises(tmp_path, "arrived_at,num_prefill_tokens,num_decode_tokens\n-1,2,3\n")
    assert (err.line, err.problem) == (2, "negative arrived_at (-1)")
    err = raises(tmp_path, "num_prefill_tokens,pd_ratio\n5,1\n", arrival=1.0)
    assert err.line == 1 and err.problem.startswith("missing column 'num_decode_tokens'")


def test_bad_canonical_files(tmp_path):
    text = "arrival_s,prompt_tokens,output_tokens,id\n0,3,4,7\n1,3,4,7\n"
    assert raises(tmp_path, text).problem == "duplicate id 7"
    text = ("arrival_s,prompt_tokens,output_tokens,block_hashes,hash_block_size\n"
            '0,33,4,"[1,2]",16\n')
    err = raises(tmp_path, text)
    assert (err.line, err.problem) == (2, "block_hashes has 2 ids but prompt_tokens 33 "
                                          "needs ceil(33/16) = 3")
    text = '# pagesim-trace {"source": \n'
    assert raises(tmp_path, text).problem.startswith("JSON syntax error in the pagesim")


def test_bad_parquet_rows_are_counted_as_rows(tmp_path):
    df = pd.DataFrame({"arrival_s": [0.0, 1.0, 2.0], "prompt_tokens": [3, 4, -5],
                       "output_tokens": [1, 1, 1]})
    df.to_parquet(tmp_path / "x.parquet")
    with pytest.raises(TraceError) as err:
        load_trace(tmp_path / "x.parquet")
    assert str(err.value).endswith("x.parquet, row 3: negative prompt_tokens (-5)")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(TraceError, match="not a readable Parquet file"):
        load_trace(tmp_path / "junk.parquet")


LONG = azure(good(0), "2023-11-16 18:15:01.0000000,4000,200",
             "2023-11-16 18:15:02.0000000,100,5000", good(3))


def test_too_long_error(tmp_path):
    err = raises(tmp_path, LONG, max_model_len=4096, on_too_long="error")
    assert err.line == 3
    assert err.problem.startswith("request of 4200 tokens (prompt 4000 + output 200) "
                                  "exceeds max_model_len 4096")


def test_too_long_reject_is_counted_and_warned(tmp_path):
    (tmp_path / "x.csv").write_text(LONG)
    with pytest.warns(TraceWarning, match=r"rejected 2 of 4 requests longer than "
                                          r"max_model_len=4096.*lines 3, 4"):
        t = load_trace(tmp_path / "x.csv", max_model_len=4096)
    assert [r.id for r in t] == [0, 3]
    assert t.meta["too_long"] == 2 and t.meta["on_too_long"] == "reject"


def test_too_long_truncate(tmp_path):
    (tmp_path / "x.csv").write_text(LONG)
    with pytest.warns(TraceWarning, match="truncated 2 of 4"):
        t = load_trace(tmp_path / "x.csv", max_model_len=4096, on_too_long="truncate")
    assert t.prompt_tokens.tolist() == [100, 4000, 100, 100]
    assert t.output_tokens.tolist() == [10, 96, 3996, 10]
    assert t.meta["too_long"] == 2


def test_within_limit_is_quiet(tmp_path):
    (tmp_path / "x.csv").write_text(azure(good(0)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = load_trace(tmp_path / "x.csv", max_model_len=4096)
    assert t.meta["too_long"] == 0
    with pytest.raises(ValueError, match="on_too_long"):
        load_trace(tmp_path / "x.csv", max_model_len=10, on_too_long="ignore")


def test_truncation_keeps_ids_and_hashes_consistent():
    hashes = tuple(range(100, 104))                 # 4 blocks of 16: 60 prompt tokens
    req = Request(0, 0.0, 60, 8, prompt_token_ids=tuple(range(60)), block_hashes=hashes,
                  hash_block_size=16)
    with pytest.warns(TraceWarning):
        cut = traces.apply_max_model_len(Trace([req]), 41, "truncate")[0]
    assert (cut.prompt_tokens, cut.output_tokens) == (40, 1)
    assert cut.prompt_token_ids == tuple(range(40))
    assert cut.block_hashes[:2] == hashes[:2]       # whole blocks kept
    assert cut.block_hashes[2] not in hashes        # block 2 lost 4 tokens: new id
    assert len(cut.block_hashes) == 3 and cut.hashed_tokens == 40
    with pytest.raises(TraceError, match="row 1: request of 68 tokens"):
        traces.apply_max_model_len(Trace([req]), 41, "error")


def test_missing_file_is_not_a_trace_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_trace(tmp_path / "nope.csv")
