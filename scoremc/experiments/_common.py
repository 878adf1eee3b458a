"""Shared output handling of the reproductions: one folder, netCDF + PNG + Markdown."""
from __future__ import annotations

from pathlib import Path

from .._io import write_text
from ..plotting import plot_variance, summary_markdown
from ..variance import save_dataset


def write_sweep(ds, out_dir, stem: str, title: str, weightings=(None,), notes: str = "") -> dict:
    """Write ``stem.nc``, ``stem.png`` (plus ``stem_<weighting>.png``) and ``stem.md`` into out_dir."""
    out = Path(out_dir)
    files = {"netcdf": save_dataset(ds, out / f"{stem}.nc")}
    for w in weightings:
        name = f"{stem}.png" if w is None else f"{stem}_{w}.png"
        files[f"png{'' if w is None else '_' + w}"] = plot_variance(ds, out / name, weighting=w, title=title)
    files["markdown"] = write_text(out / f"{stem}.md", f"## {title}\n\n{notes}\n\n{summary_markdown(ds)}\n")
    return files
