"""Plots and Markdown summaries of variance sweeps (matplotlib, Agg backend, atomic writes)."""
from __future__ import annotations

import os

import numpy as np

from ._io import atomic_path

__all__ = ["plot_variance", "figure", "panels", "save_figure", "summary_markdown", "ROUND_OFF_FLOOR"]

#: variance plots start at this fraction of the panel's maximum; below it values are round-off
ROUND_OFF_FLOOR = 1e-12


def save_figure(fig, path) -> str:
    """Save a matplotlib figure as PNG atomically; returns the path."""
    with atomic_path(path, suffix=".png.tmp") as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return os.fspath(path)


def figure(nrows: int = 1, ncols: int = 1, figsize=(6.4, 4.8), **subplot_kw):
    """A pyplot-free Agg figure (no global backend switch, nothing to close): (fig, axes (nrows, ncols))."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False, **subplot_kw)


def panels(n_panels: int, width: float = 4.2, height: float = 3.4):
    """(fig, flat list of axes) with up to 4 panels per row; unused axes hidden."""
    cols = min(n_panels, 4)
    rows = -(-n_panels // cols)
    fig, axes = figure(rows, cols, figsize=(width * cols, height * rows))
    for ax in axes.flat[n_panels:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def plot_variance(ds, path, var: str = "V", weighting: str | None = None, title: str | None = None) -> str:
    """Log-scale V(t) per estimator, one panel per target, with +-2 standard-error bands.

    ``weighting`` (a name on the ``weighting`` dimension, e.g. "song" for sigma^2, "likelihood" for g^2)
    plots lambda(t) V(t) from ``V_weighted``.
    """
    data = ds["V_weighted"].sel(weighting=weighting) if weighting else ds[var]
    se = ds["V_se"] * (data / ds["V"]).fillna(0) if var == "V" else None
    fig, axes = panels(ds.sizes["target"])
    for ax, target in zip(axes, ds["target"].values):
        for est in ds["estimator"].values:
            y = data.sel(target=target, estimator=est).values
            line, = ax.plot(ds["t"].values, np.where(y > 0, y, np.nan), label=str(est))
            if se is not None:
                e = 2 * se.sel(target=target, estimator=est).values
                ax.fill_between(ds["t"].values, np.clip(y - e, y * 1e-3, None), y + e, color=line.get_color(),
                                alpha=0.15, linewidth=0)
        ax.set_yscale("log")
        top = np.nanmax(data.sel(target=target).values)
        if np.isfinite(top) and top > 0:
            # zero-variance estimators come out at round-off (1e-30): keep them off the scale
            ax.set_ylim(bottom=max(ax.get_ylim()[0], ROUND_OFF_FLOOR * top))
        ax.set_xlabel("t")
        ax.set_title(str(target), fontsize=10)
        ax.grid(alpha=0.3, which="both")
    labels = {"song": r"$\sigma_t^2\,V(t)$", "likelihood": r"$g_t^2\,V(t)$"}
    axes[0].set_ylabel("V(t)" if weighting in (None, "uniform") else labels.get(weighting, f"{weighting}(t) V(t)"))
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def summary_markdown(ds, var: str = "V") -> str:
    """A short Markdown report: per target, each estimator's V at five times and its peak."""
    picks = np.unique(np.linspace(0, ds.sizes["t"] - 1, 5).round().astype(int))
    ts = ds["t"].values[picks]
    lines = [f"Process: `{ds.attrs.get('process', '?')}`; n_outer={ds.attrs.get('n_outer')}, "
             f"n_inner={ds.attrs.get('n_inner')}, seed={ds.attrs.get('seed')}.", ""]
    for target in ds["target"].values:
        lines += [f"### {target}", "", "| estimator | method | " + " | ".join(f"V(t={t:.3g})" for t in ts)
                  + " | argmax t |", "|---" * (len(ts) + 3) + "|"]
        for est in ds["estimator"].values:
            v = ds[var].sel(target=target, estimator=est).values
            peak = ds["t"].values[int(np.nanargmax(v))] if np.isfinite(v).any() else float("nan")
            method = str(ds["method"].sel(target=target, estimator=est).values)
            lines.append(f"| {est} | {method} | " + " | ".join(f"{x:.3g}" for x in v[picks]) + f" | {peak:.3g} |")
        lines.append("")
    return "\n".join(lines)
