"""Matplotlib figures as PNG files: the one way a chart leaves this package."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

__all__ = ["figure_png", "pyplot"]


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (no screen needed)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def figure_png(fig: Any, path: str | Path | None = None, dpi: int = 110, **savefig: Any) -> bytes:
    """The figure as PNG bytes, closed afterwards; written atomically to ``path`` when given."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, **savefig)
    pyplot().close(fig)
    data = buf.getvalue()
    if path is not None:
        from instructengine.runs import atomic_write_bytes

        atomic_write_bytes(Path(path), data)
    return data
