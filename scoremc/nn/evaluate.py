"""A score model against the exact truth of its target: :func:`evaluate` (everything, an ``xarray.Dataset``),
its parts :func:`relative_score_error` (what :func:`scoremc.nn.train.train` records during training),
:func:`score_diagnostics` (by noise level) and :func:`end_to_end` (samples and likelihood).

A score model is any callable s(x (N, d), t (N,)) -> (N, d) on torch tensors: an ``nn.Module`` (called in the
dtype and on the device of its parameters) or ``scoremc.exact_score(target, proc)`` (float64). Points, exact
values and every statistic are float64 (the model's inputs are cast, differentiably, to its dtype and its output
back). Every draw comes from a ``torch.Generator`` seeded from (``seed``, a stream number): the global RNG is
never touched, and the same call gives the same points.
"""
from __future__ import annotations

import json
import math

import numpy as np
import torch
from torch import nn

from .._validation import as_count, as_float_array, check_process
from ..conservativity import antisymmetric_norm, curl, jacobian
from ..derivatives import Autograd, DerivativeSource
from ..distributions import Empirical, logpdf, normal_form, sample
from ..fpe import fpe_residual
from ..noising import exact_score, marginal, posterior
from ..processes import EDM
from .data import check_t_range, default_t_range, stream_seed
from .metrics import median_bandwidth, mmd, sliced_wasserstein

__all__ = ["evaluate", "relative_score_error", "score_diagnostics", "end_to_end", "default_eval_times", "PRIORS"]

F64 = torch.float64
#: where the end-to-end runs start at t_hi: exact draws of p_{t_hi} (the model's error alone), or the Gaussian
#: prior N(0, (alpha^2 sigma_data^2 + sigma^2) I) of :func:`scoremc.nn.sample.sample` (the whole pipeline)
PRIORS = ("exact", "gaussian")


def default_eval_times(proc, t_range, n: int = 12) -> np.ndarray:
    lo, hi = t_range
    return np.geomspace(lo, hi, n) if isinstance(proc, EDM) else np.linspace(lo, hi, n)


class _Float64Score:
    """``model`` as a float64 score callable: x and t cast (differentiably, so autograd reaches them) to the
    model's dtype and device, the output cast back to float64 on x's device."""

    def __init__(self, model, dtype, device):
        self.model, self.dtype, self.device = model, dtype, device

    def __call__(self, x, t):
        out = self.model(x.to(self.device, self.dtype), t.to(self.device, self.dtype))
        return out.to(x.device, F64)


def _as_float64_score(model, device=None, dtype=None):
    """(float64 callable, its device): a module's dtype and device from its parameters (float64 and ``device``
    or CPU without parameters)."""
    if not callable(model):
        raise TypeError(f"model must be a score callable s(x, t) (an nn.Module or exact_score), got "
                        f"{type(model).__name__}")
    param = next(iter(model.parameters()), None) if isinstance(model, nn.Module) else None
    device = torch.device(device if device is not None else param.device if param is not None else "cpu")
    dtype = dtype if dtype is not None else param.dtype if param is not None else F64
    return _Float64Score(model, dtype, param.device if param is not None else device), device


def _ratio(num, den):
    """mean(num) / mean(den) and its delta-method standard error (num, den (n,) float64 tensors)."""
    r = num.mean() / den.mean()
    return float(r), float(torch.sqrt(((num - r * den) ** 2).mean() / len(num)) / den.mean())


def _coords(proc, ts):
    return {"t": ts, "sigma": ("t", np.asarray(proc.sigma(ts), dtype=np.float64)),
            "alpha": ("t", np.asarray(proc.alpha(ts), dtype=np.float64))}


def _dataset(cols: dict, proc, ts, attrs: dict):
    import xarray as xr  # only here: xarray is not needed to train

    return xr.Dataset({k: ("t", np.asarray(v, dtype=np.float64)) for k, v in cols.items()}, coords=_coords(proc, ts),
                      attrs=attrs)


def relative_score_error(model, dist, proc, ts, *, n: int = 2048, seed: int = 0, device=None):
    """The relative score error of ``model`` by noise level, an ``xarray.Dataset`` over ``t``:

        rel_error(t) = E||s_model(x_t, t) - grad log p_t(x_t)||^2 / E||grad log p_t(x_t)||^2,  x_t ~ p_t,

    each expectation the mean over ``n`` draws from the exact p_t (:func:`scoremc.marginal`, float64), the exact
    score from :func:`scoremc.exact_score` (float64), the model called in its own dtype (float64 without
    parameters). Also: ``rel_error_se`` (delta-method standard error of the ratio), ``mse``, ``score_sq`` (the
    two means); coordinates ``sigma``, ``alpha`` along ``t``.
    The draws come from a generator seeded by (``seed``, 2) on ``device`` (default: the model's), the same at
    every call: errors at different training steps are compared on the same points.
    """
    proc = check_process(proc)
    n = as_count(n, "n", minimum=2)
    fn, device = _as_float64_score(model, device)
    ts = as_float_array(ts, "ts").reshape(-1)
    proc.check_t(ts, "ts")
    gen = torch.Generator(device=device).manual_seed(stream_seed(seed, 2))
    truth = exact_score(dist, proc)
    cols = {k: [] for k in ("rel_error", "rel_error_se", "mse", "score_sq")}
    for t in ts:
        x = sample(marginal(dist, proc, t), n, gen, dtype=F64)
        tt = torch.full((n,), float(t), dtype=F64, device=device)
        s = truth(x, tt)
        with torch.no_grad():
            e2, s2 = ((fn(x, tt) - s) ** 2).sum(-1), (s * s).sum(-1)
        for k, v in zip(cols, (*_ratio(e2, s2), float(e2.mean()), float(s2.mean()))):
            cols[k].append(v)
    return _dataset(cols, proc, ts, {"process": repr(proc), "target": repr(dist), "n": n,
                                     "definition": "E|s_model - s|^2 / E|s|^2, x_t ~ p_t"})


def _time_generator(seed, t, device):
    """The generator of the points at time t: seeded by (seed, 10, the bits of t), so the points at a time do not
    depend on the other times of the grid."""
    return torch.Generator(device=device).manual_seed(stream_seed(seed, 10, int(np.float64(t).view(np.uint64))))


def _field_diagnostics(fn, truth, proc, x, tt, source) -> dict:
    """The derivative-based diagnostics of the field ``fn`` at the rows x (n, d), times tt (n,)."""
    d = x.shape[-1]
    res = fpe_residual(fn, proc, x, tt, derivatives=source).detach()
    dt = truth.dt(x, tt)
    anti = antisymmetric_norm(fn, x, tt, proc=proc, derivatives=source).detach()
    hess = jacobian(truth, x, tt)  # the exact Hessian of log p_t (closed form): the scale of a Jacobian
    out = {"fpe_residual": float(res.norm(dim=-1).mean() / d),
           "fpe_residual_rel": float(torch.sqrt((res**2).sum(-1).mean() / (dt**2).sum(-1).mean())),
           "antisymmetric_norm": float(anti.mean()),
           "antisymmetric_rel": float(torch.sqrt((anti**2).mean() / (hess**2).sum((-2, -1)).mean()))}
    if d == 2:
        out["curl_ms"] = float((curl(fn, x, tt, proc=proc, derivatives=source).detach() ** 2).mean())
    return out


def score_diagnostics(model, target, proc, ts, *, n: int = 2048, n_derivatives: int = 256, seed: int = 0,
                      derivatives: DerivativeSource | None = None, device=None, progress=None):
    """Diagnostics of ``model`` by noise level against the exact layer, an ``xarray.Dataset`` over ``t``, on
    x_t ~ p_t (exact, float64; ``n`` draws per t, the derivative-based ones on the first ``n_derivatives``):

    * ``fpe_residual``: r_FP(t) = (1/d) E||eps[s](x_t, t)||_2, eps[s] = d/dt s - grad_x L[s] the score-FPE
      residual (FP-Diffusion §3.1, Eq. 9; :func:`scoremc.fpe_residual`); ``fpe_residual_rel``: RMS |eps[s]| over
      RMS |d/dt grad log p_t| (the exact time derivative, a scale that does not depend on the model);
    * ``antisymmetric_norm``: E ||(J - J^T)/2||_F, J = grad_x s (:func:`scoremc.conservativity.antisymmetric_norm`);
      ``antisymmetric_rel``: its RMS over the RMS ||grad^2 log p_t||_F; for d = 2, ``curl_ms`` = E curl^2
      (FP-Diffusion §6.2);
    * ``tweedie_error``: the excess risk of the model's implied denoiser D(x) = (x + sigma^2 s(x, t)) / alpha
      (Tweedie; exact for s = grad log p_t) over the minimum mean square error,
      E||D(x_t) - E[x0|x_t]||^2 / E tr Cov[x0|x_t], posterior moments from :func:`scoremc.posterior` (the MMSE
      is the natural scale: E||E[x0|x_t]||^2 can vanish for a centred target). A denoiser with this excess has
      MSE = MMSE (1 + tweedie_error). ``tweedie_error_se``: delta-method standard error.

    Each variable has an ``_exact`` twin: the same diagnostic of the exact score by the same derivative source,
    the measurement's own floor (round-off; 0 in exact arithmetic). ``derivatives``: the source of the
    x- and t-derivatives (default :class:`~scoremc.derivatives.Autograd`, exact; e.g.
    ``CentralDifference()`` for a model autograd cannot differentiate). ``progress``: a tqdm bar over the
    times (None: only on a terminal). The points at each t come from a generator seeded by (``seed``, t).
    """
    proc = check_process(proc)
    n = as_count(n, "n", minimum=2)
    n_derivatives = min(as_count(n_derivatives, "n_derivatives", minimum=2), n)
    source = Autograd() if derivatives is None else derivatives
    if not isinstance(source, DerivativeSource):
        raise TypeError(f"derivatives must be a scoremc derivative source, got {type(derivatives).__name__}")
    fn, device = _as_float64_score(model, device)
    ts = np.asarray(ts, dtype=np.float64).reshape(-1)
    proc.check_t(ts, "ts")
    truth = exact_score(target, proc)
    from tqdm.auto import tqdm

    cols = {}
    for t in tqdm(ts, desc="diagnostics", unit="t", disable=None if progress is None else not progress):
        a, s = float(proc.alpha(t)), float(proc.sigma(t))
        x = sample(marginal(target, proc, t), n, _time_generator(seed, t, device), dtype=F64)
        tt = torch.full((n,), float(t), dtype=F64, device=device)
        post = posterior(target, proc, t, x.cpu().numpy())
        mean = torch.as_tensor(post.mean(), device=device)
        mmse = torch.as_tensor(post.trace_cov(), device=device)
        row = {}
        for suffix, field in (("", fn), ("_exact", truth)):
            with torch.no_grad():
                denoised = (x + s * s * field(x, tt)) / a
            row["tweedie_error" + suffix], row["tweedie_error_se" + suffix] = \
                _ratio(((denoised - mean) ** 2).sum(-1), mmse)
            k = n_derivatives
            row.update({key + suffix: v for key, v in
                        _field_diagnostics(field, truth, proc, x[:k], tt[:k], source).items()})
        for key, v in row.items():
            cols.setdefault(key, []).append(v)
    return _dataset(cols, proc, ts, {"process": repr(proc), "target": repr(target), "n": n,
                                     "n_derivatives": n_derivatives, "derivatives": repr(source)})


def _end_to_end(model, target, proc, *, n_samples, n_likelihood, sampler, likelihood, prior, t_range,
                n_projections, rtol, atol, seed, device, progress):
    """(the metrics as a dict of floats, {"model": (n, d), "exact": (n, d)} samples)."""
    from .sample import Heun, sample as run_sampler

    proc = check_process(proc)
    sampler = Heun() if sampler is None else sampler
    n_samples = as_count(n_samples, "n_samples", minimum=2)
    if prior not in PRIORS:
        raise ValueError(f"prior must be one of {PRIORS}, got {prior!r}")
    fn, device = _as_float64_score(model, device)
    t_lo, t_hi = default_t_range(proc) if t_range is None else check_t_range(proc, t_range)
    dim = normal_form(target).dim
    gen = lambda k: torch.Generator(device=device).manual_seed(stream_seed(seed, k))  # noqa: E731
    g = gen(11)
    x_T = sample(marginal(target, proc, t_hi), n_samples, g, dtype=F64) if prior == "exact" else None
    model_x = run_sampler(fn, proc, sampler, n=None if prior == "exact" else n_samples, x_T=x_T, dim=dim,
                          sigma_data=target.sigma_data, t_range=(t_lo, t_hi), generator=g, device=device, dtype=F64,
                          progress=progress)
    exact_x = sample(target, n_samples, gen(12), dtype=F64)
    # the noise floor: an independent exact sample of the law the sampler aims at, p_{t_lo} (p0 up to sigma(t_lo))
    floor_x = sample(marginal(target, proc, t_lo), n_samples, gen(13), dtype=F64)
    # one kernel and one set of directions for the model and the floor, fixed by the exact samples: the numbers
    # of different models on one target compare
    h = median_bandwidth(exact_x, floor_x)
    theta = torch.randn((as_count(n_projections, "n_projections"), dim), generator=gen(14), dtype=F64,
                        device=device)
    out = {"mmd": float(mmd(model_x, exact_x, bandwidth=h)), "mmd_floor": float(mmd(floor_x, exact_x, bandwidth=h)),
           "mmd_bandwidth": float(h),
           "sliced_wasserstein": float(sliced_wasserstein(model_x, exact_x, directions=theta)),
           "sliced_wasserstein_floor": float(sliced_wasserstein(floor_x, exact_x, directions=theta))}
    if likelihood and not isinstance(target, Empirical):  # an Empirical has no density: no KL
        out.update(_kl(fn, target, proc, (t_lo, t_hi), as_count(n_likelihood, "n_likelihood", minimum=2), prior,
                       rtol, atol, gen))
    return out, {"model": model_x, "exact": exact_x}


def _kl(fn, target, proc, t_range, n, prior, rtol, atol, gen) -> dict:
    """kl = E_{p0}[log p0 - log p_theta] over n exact draws of p0; kl_floor: the same with the exact law at t_lo
    (log p_{t_lo}, what the exact score's PF-ODE gives)."""
    from .likelihood import log_likelihood

    x = sample(target, n, gen(15), dtype=F64)
    log_p0 = logpdf(target, x)
    log_model = log_likelihood(fn, proc, x, t_range=t_range, sigma_data=target.sigma_data, rtol=rtol, atol=atol,
                               prior=marginal(target, proc, t_range[1]) if prior == "exact" else None,
                               generator=gen(16)).to(F64)
    gap = log_p0 - log_model
    return {"kl": float(gap.mean()), "kl_se": float(gap.std() / math.sqrt(n)),
            "kl_floor": float((log_p0 - logpdf(marginal(target, proc, t_range[0]), x)).mean())}


def end_to_end(model, target, proc, *, n_samples: int = 2048, n_likelihood: int = 256, sampler=None,
               likelihood: bool = True, prior: str = "exact", t_range=None, n_projections: int = 256,
               rtol: float = 1e-5, atol: float = 1e-5, seed: int = 0, device=None, progress=None) -> dict:
    """End-to-end metrics of ``model`` on ``target`` under ``proc``, a dict of floats:

    * ``mmd``: the unbiased MMD^2 (:func:`scoremc.nn.metrics.mmd`) between ``n_samples`` model samples
      (:func:`scoremc.nn.sample.sample` with ``sampler``, default ``Heun()``, from t_hi down to t_lo of
      ``t_range``, default the training interval) and as many exact samples of p0 (:func:`scoremc.sample`);
      ``sliced_wasserstein``: SW_2 over ``n_projections`` random directions; ``mmd_floor`` and
      ``sliced_wasserstein_floor``: the same between an independent exact sample of p_{t_lo} (p0 up to the noise
      sigma(t_lo) the sampler stops at) and the p0 sample: what the exact score would score, its noise floor.
      The kernel bandwidth ``mmd_bandwidth`` (median heuristic) and the directions are fixed by the exact samples.
    * with ``likelihood`` (not for an ``Empirical``, which has no density): ``kl`` = E_{p0}[log p0(x) -
      log p_theta(x)] over ``n_likelihood`` exact draws, log p0 exact (:func:`scoremc.logpdf`), log p_theta the
      PF-ODE log-likelihood (:func:`scoremc.nn.likelihood.log_likelihood`, ``rtol``, ``atol``) of the model's
      law at t_lo; ``kl_se`` its standard error; ``kl_floor`` = E_{p0}[log p0 - log p_{t_lo}], the exact
      score's value (the price of stopping at t_lo; kl - kl_floor is the model's own part).

    ``prior``: "exact" (default) starts the sampler at exact draws of p_{t_hi} and ends the likelihood's ODE on
    the exact log p_{t_hi}, so that the metrics measure the score alone; "gaussian" uses the samplers'
    N(0, (alpha^2 sigma_data^2 + sigma^2) I) (sigma_data = the target's), the whole generative pipeline.
    Seeded by (``seed``, stream) generators on ``device`` (default the model's).
    """
    return _end_to_end(model, target, proc, n_samples=n_samples, n_likelihood=n_likelihood, sampler=sampler,
                       likelihood=likelihood, prior=prior, t_range=t_range, n_projections=n_projections, rtol=rtol,
                       atol=atol, seed=seed, device=device, progress=progress)[0]


def evaluate(model, target, proc, ts=None, *, n: int = 2048, n_derivatives: int = 256, n_samples: int = 2048,
             n_likelihood: int = 256, sampler=None, likelihood: bool = True, prior: str = "exact", t_range=None,
             derivatives: DerivativeSource | None = None, seed: int = 0, device=None, progress=None):
    """``model`` against the exact truth of ``target`` under ``proc``, an ``xarray.Dataset``:

    * over ``t`` (``ts``, default 12 times over the training interval ``t_range``, log-spaced for EDM):
      :func:`relative_score_error` (``rel_error``, ``rel_error_se``, ``mse``, ``score_sq``; ``n`` draws per t)
      and :func:`score_diagnostics` (score-FPE residual, antisymmetric Jacobian / curl, Tweedie error, each with
      its ``_exact`` floor; ``n_derivatives``, ``derivatives``);
    * scalars: :func:`end_to_end` (``mmd``, ``sliced_wasserstein`` and their ``_floor``, ``mmd_bandwidth``,
      ``kl``, ``kl_se``, ``kl_floor``; ``n_samples``, ``sampler``, ``likelihood``, ``prior``, ``n_likelihood``);
    * ``samples_model``, ``samples_exact`` (sample, dim): the two samples compared.

    Attributes: ``process``, ``target``, ``model`` (reprs), ``settings`` (JSON). See the parts for definitions.
    """
    from .sample import Heun

    proc = check_process(proc)
    sampler = Heun() if sampler is None else sampler
    t_range = default_t_range(proc) if t_range is None else check_t_range(proc, t_range)
    ts = default_eval_times(proc, t_range) if ts is None else np.asarray(ts, dtype=np.float64).reshape(-1)
    proc.check_t(ts, "ts")
    ds = relative_score_error(model, target, proc, ts, n=n, seed=seed, device=device)
    diag = score_diagnostics(model, target, proc, ts, n=n, n_derivatives=n_derivatives, seed=seed,
                             derivatives=derivatives, device=device, progress=progress)
    ds = ds.merge(diag, compat="override", join="exact", combine_attrs="drop")
    metrics, samples = _end_to_end(model, target, proc, n_samples=n_samples, n_likelihood=n_likelihood,
                                   sampler=sampler, likelihood=likelihood, prior=prior, t_range=t_range,
                                   n_projections=256, rtol=1e-5, atol=1e-5, seed=seed, device=device,
                                   progress=progress)
    for key, value in metrics.items():
        ds[key] = ((), value)
    for key, value in samples.items():
        ds[f"samples_{key}"] = (("sample", "dim"), value.detach().cpu().numpy())
    settings = {"n": n, "n_derivatives": diag.attrs["n_derivatives"], "n_samples": n_samples,
                "n_likelihood": n_likelihood, "sampler": repr(sampler), "likelihood": bool(likelihood),
                "prior": prior, "t_range": list(t_range), "derivatives": diag.attrs["derivatives"], "seed": seed}
    ds.attrs = {"process": repr(proc), "target": repr(target), "model": repr(model), "settings": json.dumps(settings)}
    return ds
