"""The PCIe links' utilisation over time, from a replay's links table
(``--link-model pcie``: one row per transfer, ``start_s`` to ``end_s``)."""
from __future__ import annotations

import numpy as np
import pandas as pd


def link_utilisation(links: pd.DataFrame, bin_s: float, *, links_per_direction: int = 1) -> pd.DataFrame:
    """Busy fraction of each direction's link(s) per time bin: one row per
    bin (``time_s``: its start), one column per direction (``h2d``, ``d2h``).

    Each transfer is spread over the bins it overlaps, so a bin's value is
    the busy seconds in it over ``bin_s * links_per_direction`` (pass the
    number of replicas for a cluster's table: their mean). The bins' busy
    seconds sum to the table's ``end_s - start_s``: nothing is dropped."""
    if bin_s <= 0:
        raise ValueError(f"bin_s must be positive, got {bin_s}")
    end = float(links["end_s"].max()) if len(links) else 0.0
    edges = np.arange(0.0, end + bin_s, bin_s)
    if len(edges) < 2:
        edges = np.array([0.0, bin_s])
    out = {"time_s": edges[:-1]}
    for direction in ("h2d", "d2h"):
        mine = links[links["direction"] == direction]
        s = mine["start_s"].to_numpy()[:, None]
        e = mine["end_s"].to_numpy()[:, None]
        overlap = np.clip(np.minimum(e, edges[None, 1:]) - np.maximum(s, edges[None, :-1]), 0.0, None)
        out[direction] = overlap.sum(axis=0) / (bin_s * links_per_direction)
    return pd.DataFrame(out)
