"""The options tyro generates from the option-group dataclasses: every one
in the help with its default and choices, the argparse forms users rely on
(``--x/--no-x`` with an unset default, ``--timeline [N]``, ``--goodput A B``),
and ``--config`` values as defaults that the command line overrides."""
from __future__ import annotations

import pytest

from pagesim.cli import COMMANDS, command_specs, main, parse_command


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_option_is_in_the_help_with_its_help_text(command, capsys):
    assert main([command, "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())   # the help's lines re-joined
    for spec in command_specs(command).values():
        assert spec.help, f"{spec.flag} of {command} has no help"
        if not spec.positional:
            assert spec.flag in out, f"{spec.flag} missing from pagesim {command} --help"


def test_help_lists_defaults_and_choices(capsys):
    assert main(["replay", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--block-size BLOCK_SIZE tokens per KV block (1..256) (default: 16)" in out
    assert "--allocator {paged,orca-max,orca-pow2,orca-oracle}" in out
    assert "--prefix-caching, --no-prefix-caching" in out
    assert "--max-num-seqs MAX_NUM_SEQS" in out and "(default: 256)" in out


@pytest.mark.parametrize("argv,expected", [
    ([], None), (["--prefix-caching"], True), (["--no-prefix-caching"], False)])
def test_optional_switch_keeps_its_unset_default(argv, expected):
    assert parse_command("replay", argv).prefix_caching is expected


@pytest.mark.parametrize("argv,expected", [
    ([], None), (["--timeline"], 1000), (["--timeline", "5"], 5)])
def test_timeline_takes_an_optional_value(argv, expected):
    assert parse_command("replay", argv).timeline == expected


def test_values_are_converted_by_the_declared_checks():
    args = parse_command("replay", ["--goodput", "ttft:500", "tpot:50", "--metric-percentiles",
                                    "50,99", "--format", "azure", "--scheduler", "v0"])
    assert args.goodput == (("ttft", 500.0), ("tpot", 50.0))
    assert args.metric_percentiles == (50.0, 99.0)
    assert args.trace_format == "azure" and args.scheduler == "v0"
    assert parse_command("compare", ["--allocators", "paged,orca-max"]).allocators == [
        "paged", "orca-max"]


def test_config_values_are_defaults_the_command_line_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("quiet: true\nreport: false\nblock_size: 32\nchunked_prefill: false\n")
    args = parse_command("replay", ["--config", str(path)])
    assert args.quiet is True and args.report is False and args.block_size == 32
    assert args.chunked_prefill is False
    args = parse_command("replay", ["--config", str(path), "--report", "--block-size", "8",
                                    "--chunked-prefill"])
    assert args.report is True and args.block_size == 8 and args.chunked_prefill is True


def test_missing_required_option_exits_2(capsys):
    assert main(["validate"]) == 2
    assert "--calibration" in capsys.readouterr().err
