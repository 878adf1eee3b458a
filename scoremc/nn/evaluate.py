"""A score model against the exact score of its target, by noise level (:func:`relative_score_error`), as an
``xarray.Dataset``: what :func:`scoremc.nn.train.train` records during training."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .._validation import as_count, check_process
from ..distributions import sample
from ..noising import exact_score, marginal
from ..processes import EDM
from .data import stream_seed

__all__ = ["relative_score_error", "default_eval_times"]


def default_eval_times(proc, t_range, n: int = 12) -> np.ndarray:
    lo, hi = t_range
    return np.geomspace(lo, hi, n) if isinstance(proc, EDM) else np.linspace(lo, hi, n)


def relative_score_error(model, dist, proc, ts, *, n: int = 2048, seed: int = 0, device=None):
    """The relative score error of ``model`` by noise level, an ``xarray.Dataset`` over ``t``:

        rel_error(t) = E||s_model(x_t, t) - grad log p_t(x_t)||^2 / E||grad log p_t(x_t)||^2,  x_t ~ p_t,

    each expectation the mean over ``n`` draws from the exact p_t (:func:`scoremc.marginal`, float64), the exact
    score from :func:`scoremc.exact_score` (float64), the model called in its own dtype. Also: ``rel_error_se``
    (delta-method standard error of the ratio), ``mse``, ``score_sq`` (the two means); coordinates ``sigma``,
    ``alpha`` along ``t``.
    The draws come from a generator seeded by (``seed``, 2) on ``device`` (default: the model's), the same at
    every call: errors at different training steps are compared on the same points.
    """
    proc = check_process(proc)
    n = as_count(n, "n", minimum=2)
    param = next(iter(model.parameters()), None) if isinstance(model, nn.Module) else None
    if device is None:
        device = param.device if param is not None else "cpu"
    device = torch.device(device)
    dtype = param.dtype if param is not None else torch.float32
    ts = np.asarray(ts, dtype=np.float64).reshape(-1)
    gen = torch.Generator(device=device).manual_seed(stream_seed(seed, 2))
    truth = exact_score(dist, proc)
    cols = {k: [] for k in ("rel_error", "rel_error_se", "mse", "score_sq")}
    for t in ts:
        x = sample(marginal(dist, proc, t), n, gen, dtype=torch.float64)
        tt = torch.full((n,), float(t), dtype=torch.float64, device=device)
        s = truth(x, tt)
        with torch.no_grad():
            m = model(x.to(dtype), tt.to(dtype)).to(torch.float64)
        e2, s2 = ((m - s) ** 2).sum(-1), (s * s).sum(-1)
        ratio = e2.mean() / s2.mean()
        se = torch.sqrt(((e2 - ratio * s2) ** 2).mean() / n) / s2.mean()
        for k, v in zip(cols, (ratio, se, e2.mean(), s2.mean())):
            cols[k].append(float(v))
    import xarray as xr

    data = {k: ("t", np.array(v)) for k, v in cols.items()}
    coords = {"t": ts, "sigma": ("t", np.asarray(proc.sigma(ts), dtype=np.float64)),
              "alpha": ("t", np.asarray(proc.alpha(ts), dtype=np.float64))}
    return xr.Dataset(data, coords=coords, attrs={"process": repr(proc), "target": repr(dist), "n": n,
                                                     "definition": "E|s_model - s|^2 / E|s|^2, x_t ~ p_t"})
