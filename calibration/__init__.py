"""Calibration files committed with pagesim (``pagesim.calibration``).

One JSON file per (model, GPU, tp, block size) measured by ``pagesim
calibrate``; ``--cost-model auto`` (the default) picks the file matching a
replay's presets and falls back to the roofline model otherwise.
"""
