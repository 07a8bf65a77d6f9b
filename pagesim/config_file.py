"""``--config FILE``: the options of ``replay`` and ``compare`` kept in a
YAML, TOML or JSON file, so that a run can be kept, shared and re-run.

Keys are the options' names (``block_size`` or ``block-size``); the
positional trace is ``trace``. Each value goes through the same check as
on the command line (the option's check and choices, declared once in its
option group: ``generated_options.OptionSpec.parse``), and the checked
values become the defaults of the generated options, so an option given on
the command line overrides the file. A bad key or
value is refused with the file, the key (and, in YAML, the line) named,
before anything runs: ``main`` exits 2.

A ``summary.json`` is a config file too: its ``config`` block (or the whole
file) holds the ``ReplayConfig`` and, from the CLI, a ``workload`` block
and the ``executor``, so ``replay --config OUT/summary.json`` re-runs the
run exactly. Its nested ``scheduler`` block is flattened (its
``generation`` is ``--scheduler``), ``fast`` is the opposite of
``--step-by-step`` and ``capacity_tokens`` (derived) is skipped.

Relative paths of input files (``trace``, ``cost_model``, ``model``,
``gpu``) are looked up next to the config file first, then from the
current folder.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pagesim.sim.costmodel.spec_files import loader

#: Options whose value may name an input file (see the module doc).
PATH_KEYS = ("trace", "cost_model", "model", "gpu")
#: Keys of a summary's config block that are not options: derived values.
DERIVED = ("capacity_tokens",)
#: Options that a file may not set.
NOT_OPTIONS = {"config"}
#: Config fields whose option has another name.
RENAMED = {"pcie_bandwidth_gbps": "pcie_bandwidth"}
#: summary.json keys that a command without that option leaves aside.
SUMMARY_ONLY = {"compare": ("events",)}


class ConfigError(ValueError):
    """A config file that cannot be used; the message names file, key, line."""


def read_mapping(path: str) -> tuple[dict, dict[str, int]]:
    """The file's top-level mapping and, for YAML, each key's line (keys of
    nested blocks as ``block.key``)."""
    p = Path(path)
    suffix = p.suffix.lower()
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    lines: dict[str, int] = {}
    if suffix not in (".yaml", ".yml", ".toml", ".json"):
        raise ConfigError(f"{path}: config files are .yaml, .yml, .toml or .json, "
                          f"not {suffix or 'a file without a suffix'!r}")
    loads, error = loader(suffix)
    try:
        data = loads(text)
        if suffix in (".yaml", ".yml"):
            lines = _yaml_lines(text)
    except error as exc:
        raise ConfigError(f"{path}: not valid {suffix[1:].upper()}: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option names to values at the top, "
                          f"got {type(data).__name__}")
    if isinstance(data.get("config"), dict):    # a whole summary.json
        data = data["config"]
        lines = {k.removeprefix("config."): v for k, v in lines.items()}
    return data, lines


def _yaml_lines(text: str) -> dict[str, int]:
    import yaml  # already loaded by loader
    node = yaml.compose(text)
    out: dict[str, int] = {}

    def walk(n, prefix: str) -> None:
        if not isinstance(n, yaml.MappingNode):
            return
        for key, value in n.value:
            name = prefix + str(key.value).replace("-", "_")
            out[name] = key.start_mark.line + 1
            walk(value, name + ".")
    walk(node, "")
    return out


def flatten(data: dict, command: str) -> list[tuple[str, str, object]]:
    """``(option dest, key as written, value)`` for every key of ``data``,
    with a summary's nested blocks and renamed keys mapped to options."""
    out = []
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name == "scheduler" and isinstance(value, dict):
            for k, v in value.items():
                sub = str(k).replace("-", "_")
                out.append(("scheduler" if sub == "generation" else sub, f"scheduler.{k}", v))
        elif name == "workload" and isinstance(value, dict):
            out += [(str(k).replace("-", "_"), f"workload.{k}", v) for k, v in value.items()]
        elif name == "fast" and isinstance(value, bool):
            out.append(("step_by_step", key, not value))
        elif name not in DERIVED and name not in SUMMARY_ONLY.get(command, ()):
            out.append((RENAMED.get(name, name), key, value))
    return out


def config_defaults(path: str, specs: dict, command: str) -> dict:
    """The file's options as ``{dest: checked value}`` (``specs``: dest ->
    ``OptionSpec`` of the command's options)."""
    data, lines = read_mapping(path)
    options = {dest: spec for dest, spec in specs.items() if dest not in NOT_OPTIONS}
    values = {}
    for dest, key, value in flatten(data, command):
        where = f"{path}:{lines[key.replace('-', '_')]}" if key.replace("-", "_") in lines else path
        spec = options.get(dest)
        if spec is None or dest in values:
            problem = "given twice" if spec is not None else (
                f"unknown option for pagesim {command} (see pagesim {command} --help)")
            raise ConfigError(f"{where}: key {key!r}: {problem}")
        if value is None:
            continue    # unset: the option's default
        if dest in PATH_KEYS and isinstance(value, str):
            value = _near(path, value)
        try:
            values[dest] = convert(spec, value)
        except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
            raise ConfigError(f"{where}: key {key!r}: {exc}") from None
    return values


def _near(config_path: str, value: str) -> str:
    """A relative input path next to the config file if a file is there."""
    p = Path(value).expanduser()
    beside = Path(config_path).parent / p
    return str(beside) if not p.is_absolute() and beside.is_file() else value


def convert(spec, value):
    """``value`` (from YAML/TOML/JSON) checked as the option checks its text."""
    if spec.kind != "value":
        if not isinstance(value, bool):
            raise TypeError(f"expected true or false, got {value!r}")
        return value
    if spec.nargs == "+":
        items = list(value.items()) if isinstance(value, dict) else value
        if not isinstance(items, list):
            items = [items]
        return tuple(_one(spec, ":".join(map(str, v)) if isinstance(v, (list, tuple)) else v)
                     for v in items)
    if isinstance(value, list):   # comma-separated options: --allocators, --metric-percentiles
        value = ",".join(str(_plain(v)) for v in value)
    return _one(spec, value)


def _plain(v):
    return int(v) if isinstance(v, float) and v.is_integer() else v


def _one(spec, value):
    if isinstance(value, bool) or isinstance(value, (dict, list)):
        raise TypeError(f"expected a single value, got {value!r}")
    if not isinstance(value, (str, int, float)):
        raise TypeError(f"unexpected value {value!r}")
    return spec.parse(str(value))


def config_path(argv: list[str]) -> str | None:
    """The ``--config FILE`` of a command line, read before it is parsed
    (its values are the defaults the parse starts from); the last one wins."""
    found = None
    for i, token in enumerate(argv):
        if token == "--":
            break
        if token == "--config" and i + 1 < len(argv):
            found = argv[i + 1]
        elif token.startswith("--config="):
            found = token.partition("=")[2]
    return found
