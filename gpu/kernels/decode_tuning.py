"""Split-K depth of ``paged_decode``, tuned once per device and cached.

How many programs per SM the split shapes want depends on the card, not
only on its SM count: the H100 sweeps (bench/KERNEL_NOTES.md, run 6) found
one program per SM best, while on an H200 (same 132 SMs, 1.4x the bandwidth)
32 splits at 1 x 32768 and 4 at 8 x 4096 - two per SM - beat that table by
4-5 %. More bandwidth at the same latency wants more bytes in flight
(Little's law), and how much more a program buys is not something a formula
over the datasheet gets right to 1 %. So the split rows of the decode table
take their ``waves`` (programs per SM) from a file written by ``tune``::

    $PAGESIM_CACHE_DIR (default ~/.cache/pagesim)/decode-<device slug>-<SMs>sm.json
        {"device": "NVIDIA H200", "sms": 132, "waves_small": 2, "waves": 2, "times_us": {...}}

``waves_small`` applies to at most SMs/8 (sequence, kv head) groups (one or
two sequences), ``waves`` to the other split rows. Without a file the table's
own values (the H100's) apply. ``decode_tuner.tune`` writes the file.
"""
from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path

import torch


def cache_path(device: torch.device) -> Path:
    props = torch.cuda.get_device_properties(device)
    slug = re.sub(r"[^a-z0-9]+", "-", props.name.lower()).strip("-")
    root = Path(os.environ.get("PAGESIM_CACHE_DIR", Path.home() / ".cache" / "pagesim"))
    return root / f"decode-{slug}-{props.multi_processor_count}sm.json"


def forget() -> None:
    """Drop the loaded tunings (after ``decode_tuner.tune`` wrote a new file)."""
    _load.cache_clear()


@functools.lru_cache(maxsize=None)
def _load(index: int) -> dict:
    path = cache_path(torch.device("cuda", index))
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def tuned(device: torch.device) -> dict:
    """The cached tuning of ``device`` ({} when none, or on the CPU)."""
    if device.type != "cuda":
        return {}
    return _load(device.index if device.index is not None else torch.cuda.current_device())
