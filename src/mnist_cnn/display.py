"""How results show themselves: figures (returned, written only when given a path), HTML tables, and text that
a notebook shows as a table.

Figures are `matplotlib.figure.Figure`s on their own Agg canvas, never pyplot's, so no global backend state is
touched and nothing needs closing. They carry `_repr_png_`, so a bare `plot_curves(...)` in Jupyter shows the
picture even where pyplot (and with it the inline backend) was never imported. matplotlib is imported inside
the functions: commands that never plot never load it.
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Sequence
from html import escape
from typing import TYPE_CHECKING, Any

from .atomic import atomic_write_bytes
from .errors import MnistCnnError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 100


@functools.cache
def _figure_class() -> type:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MnistCnnError("plots need matplotlib: pip install 'mnist-cnn[plot]'") from None

    class InlineFigure(Figure):
        """A Figure that IPython shows as a PNG by itself."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            FigureCanvasAgg(self)

        def _repr_png_(self) -> bytes:
            return png_bytes(self)

    return InlineFigure


def figure(width: float, height: float) -> Figure:
    """A figure of width x height inches at DPI, on its own Agg canvas (outside pyplot, so nothing to close)."""
    fig: Figure = _figure_class()(figsize=(width, height), dpi=DPI, layout="constrained")
    return fig


def axes(ax: Axes | None, width: float, height: float) -> tuple[Figure, Axes]:
    """The user's axes and their figure, or one new axes on a new width x height figure."""
    if ax is not None:
        return ax.figure.figure, ax  # the root figure, also for axes in a subfigure
    fig = figure(width, height)
    return fig, fig.subplots()


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes (what the HTML report embeds), without a tool URL inside the file."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def finish(fig: Figure, path: str | os.PathLike | None) -> Figure:
    """The figure, also written as a PNG to `path` (atomically) when one is given."""
    if path is not None:
        atomic_write_bytes(path, png_bytes(fig))
    return fig


def html_table(header: Sequence[str], rows: Sequence[Sequence[Any]], numeric: Sequence[int] = ()) -> str:
    """An HTML table; columns whose index is in `numeric` align right."""
    def cell(tag: str, i: int, value: Any) -> str:
        align = ' style="text-align: right"' if i in numeric else ' style="text-align: left"'
        return f"<{tag}{align}>{escape(str(value))}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class Text(str):
    """Text that prints as itself (a bare notebook cell shows its lines, not one escaped string) and that a
    notebook shows as HTML (a table) where one was given. Compares, prints and pickles as the plain str."""

    html: str

    def __new__(cls, text: str, html: str = "") -> Text:
        self = super().__new__(cls, text)
        self.html = html
        return self

    def __repr__(self) -> str:
        return str(self)

    def __reduce__(self) -> tuple[type, tuple[str]]:
        return str, (str(self),)

    def _repr_html_(self) -> str:
        return self.html or f"<pre>{escape(str(self))}</pre>"


HISTORY_FORMATS = {"epoch": "{}", "loss": "{:.4f}", "accuracy": "{:.4f}", "val_loss": "{:.4f}",
                   "val_accuracy": "{:.4f}", "lr": "{:.2e}", "seconds": "{:.1f}"}


def history_table(rows: Sequence[dict[str, Any]]) -> str:
    """One HTML row per epoch, the columns training writes (others as they come)."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    cells = [[HISTORY_FORMATS.get(k, "{}").format(row[k]) if k in row else "" for k in columns] for row in rows]
    return html_table(columns, cells, numeric=range(len(columns)))
