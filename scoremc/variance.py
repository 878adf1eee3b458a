"""Variance of score estimators by noise level: sweeps over noise levels, estimators and targets, as an
``xarray.Dataset``.

:func:`variance` evaluates :func:`scoremc.variance_slice.variance_at` for every (target, t) pair. The
pairs are independent, so they run as dask tasks: in-process by default
(``scheduler="synchronous"``), or on local threads/processes, or on a dask.distributed cluster
given by its address. Each task draws from its own ``numpy.random.SeedSequence`` keyed by
(seed, target index, t index), so the result does not depend on the scheduler, the number of
workers or the order of execution, and all estimators at one (target, t) share the same x_t
(common random numbers make their differences far less noisy than their values).
"""
from __future__ import annotations

import datetime
import os
import sys
from collections.abc import Mapping

import numpy as np

from ._io import atomic_path
from ._validation import as_count, as_float_array, check_process
from .distributions import normal_form
from .identities import Identity
from .variance_slice import variance_at
from .weighting import Likelihood, SigmaSquared, Uniform, Weighting

__all__ = ["variance", "save_dataset", "DEFAULT_WEIGHTINGS"]

#: lambda(t) of the weighted variants: 1, sigma^2 (Song et al.), g^2 (likelihood weighting)
DEFAULT_WEIGHTINGS = (Uniform(), SigmaSquared(), Likelihood())


def _task(identities, dist, proc, t, kwargs, seed_key):
    rng = np.random.default_rng(np.random.SeedSequence(kwargs["seed"], spawn_key=seed_key))
    return variance_at(identities, dist, proc, t, n_outer=kwargs["n_outer"], n_inner=kwargs["n_inner"], rng=rng,
                       exact=kwargs["exact"], f_divergence=kwargs["f_divergence"], budget=kwargs["budget"])


def _as_targets(dist) -> dict:
    if isinstance(dist, Mapping):
        if not dist:
            raise ValueError("dist must hold at least one target")
        for name, d in dist.items():
            normal_form(d)
        return dict(dist)
    normal_form(dist)
    return {repr(dist): dist}


def _as_identities(identity) -> list:
    ids = [identity] if isinstance(identity, Identity) else list(identity)
    if not ids:
        raise ValueError("identity must name at least one estimator")
    for i in ids:
        if not isinstance(i, Identity):
            raise TypeError(f"identity must be DSI(), TSI(), Mix(w), OptimalMix() or STF(n_ref), got {type(i).__name__}")
    names = [i.name for i in ids]
    if len(set(names)) != len(names):
        raise ValueError(f"estimators must be distinct, got {names}")
    return ids


def _run(tasks, scheduler, num_workers, progress):
    """Compute dask delayed tasks; a tqdm bar (quiet when not a TTY) for local schedulers."""
    import dask
    from tqdm.auto import tqdm

    disable = (not sys.stderr.isatty()) if progress is None else not progress
    if scheduler is not None and "://" in str(scheduler):
        from distributed import Client  # an existing cluster, by address

        with Client(scheduler) as client:
            return client.gather(client.compute(tasks))
    from dask.callbacks import Callback

    class _Bar(Callback):
        def _start_state(self, dsk, state):
            self.bar = tqdm(total=len(tasks), desc="variance sweep", disable=disable)

        def _posttask(self, key, result, dsk, state, worker_id):
            name = key[0] if isinstance(key, tuple) else key
            if str(name).startswith("_task"):
                self.bar.update(1)

        def _finish(self, dsk, state, errored):
            self.bar.close()

    with _Bar():
        return dask.compute(*tasks, scheduler=scheduler or "synchronous", num_workers=num_workers)


def _as_weightings(weightings) -> tuple:
    ws = tuple(weightings)
    for w in ws:
        if not isinstance(w, Weighting):
            raise TypeError(f"weightings must be scoremc Weighting objects (Uniform(), SigmaSquared(), ...), "
                            f"got {type(w).__name__} {w!r}")
    names = [w.name for w in ws]
    if not ws or len(set(names)) != len(names):
        raise ValueError(f"weightings must be distinct and at least one, got {names}")
    return ws


def variance(identity, dist, proc, ts, *, n_outer: int = 1000, n_inner: int = 100, n_samples: int = 100,
             seed: int = 0, exact: bool = True, f_divergence: bool = True, weightings=DEFAULT_WEIGHTINGS,
             budget=None, scheduler=None, num_workers=None, progress=None):
    """Variance of score estimators by noise level, as an ``xarray.Dataset``.

    Parameters
    ----------
    identity : an Identity or a sequence of them (``estimator`` dimension, named by ``.name``).
    dist : a target, or a mapping name -> target (``target`` dimension).
    proc : the forward process; ``ts`` : times (1-D, non-empty, in the process's domain, with
        sigma(t) > 0 and (alpha/sigma^2)^2 finite: else ValueError naming ts).
    n_outer : points x_t ~ p_t per (target, t) for the outer average (standard errors from these).
    n_inner : posterior draws per x_t for nested Monte Carlo, D(t) and the Theorem-2 terms.
    n_samples : sample count of the Monte Carlo estimator whose variance V / n_samples is reported.
    exact : use the closed-form inner expectation where it exists (else nested MC everywhere).
    f_divergence : also estimate Theorem 2's f-divergence D(t) and the corrected STF leading term.
    weightings : Weighting objects lambda(t) for ``V_weighted`` (score space; ``weighting`` dimension
        named by ``.name``).
    budget : floats of working memory per (target, t) task: outer points are computed in canonical
        blocks of about 2^20 floats per array (``scoremc._blocks``), as many at once as the budget
        allows (None: one per core). Peak memory is a small multiple of it; the result does not
        depend on it (bit for bit), nor on the scheduler.
    scheduler : None / "synchronous" (in-process), "threads", "processes", or a dask.distributed
        address such as "tcp://127.0.0.1:8786"; ``num_workers`` for the local pools.

    Returns a Dataset with dims (target, estimator, t[, weighting]) holding ``V`` (E_{p_t} tr Cov
    of the integrand, STF Eq. 4) and ``V_se``, ``V_weighted`` (lambda(t) V for each weighting),
    ``estimator_variance`` (V / n_samples), ``bias_sq`` (split-half estimate of the squared bias of nested
    estimators; zero within ``bias_sq_se`` for every identity here), ``stf_leading``
    (corrected Theorem-2 term V_STF ~ E[(post/p0)|g - s|^2]/(n_ref - 1)), ``method``, and per
    (target, t) ``D`` / ``log_D`` (Theorem 2's f-divergence); coordinates ``sigma``, ``alpha``,
    ``log_snr``, ``g2`` along t and ``n_ref`` along estimator (0 for non-STF).
    """
    import dask

    ids = _as_identities(identity)
    targets = _as_targets(dist)
    proc = check_process(proc)
    ts = as_float_array(ts, "ts", ndim=1)
    proc.check_t(ts, "ts")
    if len(ts) == 0:
        raise ValueError("ts must hold at least one time, got an empty array")
    with np.errstate(over="ignore", divide="ignore"):
        tiny = ~np.isfinite((proc.alpha(ts) / proc.sigma(ts) ** 2) ** 2)
    if tiny.any() and not (proc.sigma(ts) == 0).any():
        raise ValueError(f"ts={float(ts[tiny][0])!r} is too close to sigma(t) = 0 for float64: (alpha/sigma^2)^2 "
                         "overflows; use a larger t")
    if (proc.sigma(ts) == 0).any():
        raise ValueError(f"ts={float(ts[proc.sigma(ts) == 0][0])!r} has sigma(t) = 0 under {proc!r}: the exact "
                         "variance curves divide by sigma(t) (the posterior is a point mass there); use t > 0")
    kwargs = dict(n_outer=as_count(n_outer, "n_outer", minimum=2), n_inner=as_count(n_inner, "n_inner", minimum=2),
                  seed=as_count(seed, "seed", minimum=0), exact=bool(exact), f_divergence=bool(f_divergence),
                  budget=None if budget is None else as_count(budget, "budget"))
    n_samples = as_count(n_samples, "n_samples")
    weightings = _as_weightings(weightings)
    task = dask.delayed(_task, pure=False)
    tasks = [task(ids, d, proc, float(t), kwargs, (ti, tj))
             for ti, d in enumerate(targets.values()) for tj, t in enumerate(ts)]
    results = _run(tasks, scheduler, num_workers, progress)
    return _assemble(results, ids, targets, proc, ts, kwargs, n_samples, weightings)


def _assemble(results, ids, targets, proc, ts, kwargs, n_samples, weightings):
    import xarray as xr

    from . import __version__

    names, est = list(targets), [i.name for i in ids]
    shape = (len(names), len(est), len(ts))
    fields = ("V", "V_se", "bias_sq", "bias_sq_se", "stf_leading", "stf_leading_se")
    arr = {f: np.full(shape, np.nan) for f in fields}
    method = np.empty(shape[:2], dtype=object)
    per_t = {f: np.full((len(names), len(ts)), np.nan) for f in ("D", "D_se", "log_D")}
    it = iter(results)
    for a in range(len(names)):
        for c in range(len(ts)):
            res = next(it)
            for f in per_t:
                per_t[f][a, c] = res.get(f, np.nan)
            for b, e in enumerate(est):
                for f in fields:
                    arr[f][a, b, c] = res["estimators"][e][f]
                method[a, b] = res["estimators"][e]["method"]
    lam = np.stack([np.asarray(w.score_space(proc, ts)) for w in weightings])
    dims = ("target", "estimator", "t")
    ds = xr.Dataset(
        {f: (dims, v) for f, v in arr.items()}
        | {"V_weighted": (("weighting",) + dims, lam[:, None, None, :] * arr["V"][None]),
           "estimator_variance": (dims, arr["V"] / n_samples),
           "method": (("target", "estimator"), method.astype(str))}
        | {f: (("target", "t"), v) for f, v in per_t.items()},
        coords={"target": names, "estimator": est, "t": ts, "weighting": [w.name for w in weightings],
                "sigma": ("t", np.asarray(proc.sigma(ts))), "alpha": ("t", np.asarray(proc.alpha(ts))),
                "log_snr": ("t", np.asarray(proc.log_snr(ts))), "g2": ("t", np.asarray(proc.g2(ts))),
                "n_ref": ("estimator", [i.n_ref for i in ids])})
    ds.attrs.update(process=repr(proc), n_outer=kwargs["n_outer"], n_inner=kwargs["n_inner"], seed=kwargs["seed"],
                    n_samples=n_samples, exact=int(kwargs["exact"]), scoremc_version=__version__,
                    created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    description="V = E_{p_t} tr Cov_{p(x0|x_t)} L (STF Eq. 4); D = E_{p_t} D_f(p0 || p(.|x_t)) "
                                "(STF Theorem 2 order, FLAG-S6); stf_leading = corrected Theorem-2 term "
                                "(FLAG-S4/S5)")
    ds["V"].attrs["long_name"] = "average posterior trace-covariance of the integrand"
    ds["D"].attrs["long_name"] = "E_{p_t} D_f(p0 || p(x0|x_t)), f of STF Theorem 2"
    return ds


def save_dataset(ds, path) -> str:
    """Write ``ds`` as netCDF (netCDF4 engine) atomically; returns the path."""
    with atomic_path(path, suffix=".nc.tmp") as tmp:
        ds.to_netcdf(tmp, engine="netcdf4")
    return os.fspath(path)
