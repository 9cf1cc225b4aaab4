"""Matplotlib, when it is installed (the optional `plot` extra); headless, no display needed."""
from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def pyplot() -> ModuleType | None:
    """``matplotlib.pyplot`` on the Agg backend, or None without matplotlib (callers then skip the plot)."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(plt: ModuleType, fig: Figure, path: Path) -> bool:
    """Lay ``fig`` out, write it to ``path`` as PNG atomically (a reader never sees half an image) at the resolution
    it was made with, close it. Returns True, so plot functions can end with ``return save_figure(...)``."""
    import io

    from .fileio import write_bytes_atomic
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi="figure")
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())
    return True
