"""Matplotlib, when it is installed (the optional `plot` extra); headless, no display needed."""
from __future__ import annotations


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend, or None without matplotlib (callers then skip the plot)."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt
