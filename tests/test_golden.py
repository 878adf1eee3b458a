"""scoremc's float64 results against the independent mpmath golden values in reference/golden/.

The JSON files are written by ``python reference/make_golden.py`` (40-digit mpmath, derivatives by
mpmath.diff, never importing scoremc); see reference/README.md. Every comparison uses

    |actual - golden| <= RTOL * max(|golden|, scale)                                   (*)

elementwise. A pure relative test would fail spuriously on entries that are tiny only because of
cancellation (an off-diagonal Hessian entry of 1e-17 next to diagonal entries of 2, a score
component near zero at a mode), where float64 can only be accurate relative to the size of the
terms that cancelled. ``scale`` is that size: for a vector or matrix quantity the largest golden
entry of the same row (one x point, or one mixture component), for a probability vector 1, for
log-densities 1 (they are sums of O(1) terms such as log 2 pi), and for the score, the divergence
and d/dt log p the magnitude of the terms they are summed from (see ``score_scale``). Inverse maps
t(sigma), t(log-SNR) get the input's relative tolerance carried to t by its derivative.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import scoremc as smc

RTOL = 1e-10
GOLDEN = Path(__file__).resolve().parents[1] / "reference" / "golden"
METHODS = ("fast", "reference")


def _load(name):
    path = GOLDEN / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; run `python reference/make_golden.py`")
    return json.loads(path.read_text())


def num(a) -> np.ndarray:
    """Nested lists of decimal strings -> float64 array (correctly rounded by the parser)."""
    return np.array(a, dtype=np.float64)


PROCESS_TABLE = _load("processes.json")["processes"]
TARGETS = _load("targets.json")["targets"]
ENTRIES = [e for p in PROCESS_TABLE for e in _load(f"mixtures_{p['name']}.json")["entries"]]
PROCESS_PARAMS = {p["name"]: p["params"] for p in PROCESS_TABLE}


def make_process(name):
    return getattr(smc, name)(**{k: float(v) for k, v in PROCESS_PARAMS[name].items()})


def make_target(name):
    spec = TARGETS[name]
    if spec["type"] == "Empirical":
        return smc.Empirical(num(spec["points"]))
    return smc.GaussianMixture(num(spec["weights"]), num(spec["means"]), num(spec["covs"]))


def assert_close(actual, golden, what, *, row_ndim=0, scale=None):
    """Check (*) with ``scale`` the max |golden| over the trailing ``row_ndim`` axes (per row),
    or an explicit scale broadcasting against ``golden``."""
    actual, golden = np.asarray(actual, dtype=np.float64), np.asarray(golden, dtype=np.float64)
    assert actual.shape == golden.shape, f"{what}: shape {actual.shape} != golden {golden.shape}"
    if scale is None:
        axes = tuple(range(golden.ndim - row_ndim, golden.ndim))
        scale = np.abs(golden).max(axis=axes, keepdims=True) if axes else np.zeros_like(golden)
    bound = RTOL * np.maximum(np.abs(golden), scale)
    err = np.abs(actual - golden)
    bad = ~(err <= bound)
    if bad.any():
        i = tuple(int(j) for j in np.argwhere(bad)[0])
        raise AssertionError(f"{what}: {bad.sum()} of {bad.size} entries off; first at {i}: "
                             f"scoremc {actual[i]!r} vs golden {golden[i]!r} (|diff| {err[i]:.3g} > "
                             f"bound {bound[i]:.3g}); max |diff|/bound = {np.max(err / bound):.3g}")


# -- processes ------------------------------------------------------------------------------------
PROCESS_ROWS = [(p["name"], row) for p in PROCESS_TABLE for row in p["rows"]]


@pytest.mark.parametrize("name,row", PROCESS_ROWS, ids=[f"{n}-t={r['t']}" for n, r in PROCESS_ROWS])
def test_process_coefficients(name, row):
    proc, t = make_process(name), float(row["t"])
    for attr, key in (("alpha", "alpha"), ("sigma", "sigma"), ("dalpha", "dalpha"), ("dsigma", "dsigma"),
                      ("drift_coef", "f"), ("g2", "g2")):
        assert_close(getattr(proc, attr)(t), num(row[key]), f"{name}.{attr}(t={row['t']})")
    assert_close(proc.diffusion(t), np.sqrt(num(row["g2"])), f"{name}.diffusion(t={row['t']})")
    # log-SNR is a difference of logs: accurate relative to max(|log alpha|, |log sigma|) >= ~1
    assert_close(proc.log_snr(t), num(row["log_snr"]), f"{name}.log_snr(t={row['t']})", scale=1.0)


def _inverse_cases():
    return [pytest.param(n, r, id=f"{n}-t={r['t']}") for n, r in PROCESS_ROWS]


# The relative tolerance on the input value (sigma, or the log-SNR with scale >= 1) maps to t through
# its derivative, so the scale of t is |value / d value/dt|: the inversion is ill-conditioned where
# the value is flat in t (e.g. VP sigma near 1 at t = 1).
@pytest.mark.parametrize("name,row", _inverse_cases())
def test_t_from_sigma(name, row):
    proc, t, sigma, dsigma = make_process(name), num(row["t"]), num(row["sigma"]), num(row["dsigma"])
    assert_close(proc.t_from_sigma(sigma), t, f"{name}.t_from_sigma", scale=abs(sigma / dsigma))


# VE at t = 0: the correctly rounded log-SNR round-trips to t = -6.5e-17, which must map to the
# endpoint (round-off), not raise
@pytest.mark.parametrize("name,row", _inverse_cases())
def test_t_from_log_snr(name, row):
    proc, t, lam = make_process(name), num(row["t"]), num(row["log_snr"])
    dlam = 2.0 * (num(row["f"]) - num(row["dsigma"]) / num(row["sigma"]))
    assert_close(proc.t_from_log_snr(lam), t, f"{name}.t_from_log_snr", scale=max(abs(lam), 1.0) / abs(dlam))


# -- mixtures -------------------------------------------------------------------------------------
def _entry_id(e):
    return f"{e['process']}-{e['target']}-t={e['t']}"


def _case(entry):
    x = num(TARGETS[entry["target"]]["x"])
    return make_process(entry["process"]), make_target(entry["target"]), float(entry["t"]), x


def score_scale(entry, x):
    """Per-row magnitude of the terms the score sum_k r_k P_k (m_k - x) is made of,
    sum_k r_k ||P_k|| (|x| + |m_k|) (max norms; ||P_k|| = 1 / smallest eigenvalue of C_k), shape (N, 1).

    At a data point of an Empirical target with small sigma the score is ~1e-100 (the other
    components' weight), while the fast path forms r @ (M P) - x (r @ P) from terms of size
    |x| / sigma^2: float64 can only give it to eps times that size."""
    covs = num(entry["marginal"]["covs"])
    if covs.ndim == 3:
        covs = np.linalg.eigvalsh(covs)
    prec_norm = 1.0 / covs.reshape(len(covs), -1).min(axis=1)                       # (K,)
    mean_norm = np.abs(num(entry["marginal"]["means"])).max(axis=1)                 # (K,)
    r = num(entry["posterior"]["weights"])                                          # (N, K)
    size = r * prec_norm * (np.abs(x).max(axis=1, keepdims=True) + mean_norm)
    return size.sum(axis=1, keepdims=True)


ENTRY_IDS = [_entry_id(e) for e in ENTRIES]
with_entries = pytest.mark.parametrize("entry", ENTRIES, ids=ENTRY_IDS)
with_methods = pytest.mark.parametrize("method", METHODS)


@with_entries
def test_marginal_law(entry):
    proc, dist, t, _ = _case(entry)
    m, g = smc.marginal(dist, proc, t), entry["marginal"]
    where = _entry_id(entry)
    assert_close(proc.alpha(t), num(entry["alpha"]), f"{where}: alpha")
    assert_close(proc.sigma(t), num(entry["sigma"]), f"{where}: sigma")
    assert_close(m.weights, num(g["weights"]), f"{where}: marginal weights", scale=1.0)
    assert_close(m.means, num(g["means"]), f"{where}: marginal means", row_ndim=2)
    covs = num(g["covs"])
    assert_close(m.covs, covs, f"{where}: marginal covs", row_ndim=covs.ndim - 1)


@with_methods
@with_entries
def test_logpdf_and_score(entry, method):
    proc, dist, t, x = _case(entry)
    where = f"{_entry_id(entry)} [{method}]"
    m, es = smc.marginal(dist, proc, t), smc.exact_score(dist, proc, method=method)
    lp, sc = num(entry["logpdf"]), num(entry["score"])
    assert_close(smc.logpdf(m, x, method=method), lp, f"{where}: logpdf(marginal)", scale=1.0)
    assert_close(es.logpdf(x, t), lp, f"{where}: exact_score.logpdf", scale=1.0)
    scale = np.maximum(np.abs(sc).max(axis=1, keepdims=True), score_scale(entry, x))
    assert_close(smc.score(m, x, method=method), sc, f"{where}: score(marginal)", scale=scale)
    assert_close(es(x, t), sc, f"{where}: exact_score", scale=scale)


@with_methods
@with_entries
def test_hessian_and_divergence(entry, method):
    proc, dist, t, x = _case(entry)
    where = f"{_entry_id(entry)} [{method}]"
    m, es = smc.marginal(dist, proc, t), smc.exact_score(dist, proc, method=method)
    H = num(entry["hessian"])
    assert_close(smc.hessian(m, x, method=method), H, f"{where}: hessian(marginal)", row_ndim=2)
    assert_close(es.hessian(x, t), H, f"{where}: exact_score.hessian", row_ndim=2)
    div = np.trace(H, axis1=-2, axis2=-1)
    div_scale = H.shape[-1] * np.abs(H).max(axis=(-2, -1))   # the trace sums d entries of this size
    assert_close(smc.divergence(m, x, method=method), div, f"{where}: divergence(marginal)", scale=div_scale)
    assert_close(es.divergence(x, t), div, f"{where}: exact_score.divergence", scale=div_scale)


@with_entries
def test_score_time_derivative(entry):
    proc, dist, t, x = _case(entry)
    where = _entry_id(entry)
    es = smc.exact_score(dist, proc)
    assert_close(es.dt(x, t), num(entry["score_dt"]), f"{where}: exact_score.dt", row_ndim=1)


@with_entries
def test_fpe_operator_is_dlogp_dt(entry):
    # L[s] = 1/2 g^2 (div s + |s|^2) - f <x, s> - f d equals d/dt log p_t (golden: mpmath.diff)
    proc, dist, t, x = _case(entry)
    where = _entry_id(entry)
    es = smc.exact_score(dist, proc)
    s, H = num(entry["score"]), num(entry["hessian"])
    d = x.shape[-1]
    g2, f = float(proc.g2(t)), float(proc.drift_coef(t))
    terms = (0.5 * g2 * (d * np.abs(H).max(axis=(-2, -1)) + (s * s).sum(-1))
             + abs(f) * (np.abs(x * s).sum(-1) + d))
    assert_close(smc.fpe_operator(es, proc, x, t), num(entry["logpdf_dt"]), f"{where}: fpe_operator", scale=terms)


@with_methods
@with_entries
def test_posterior(entry, method):
    proc, dist, t, x = _case(entry)
    where = f"{_entry_id(entry)} [{method}]"
    post, g = smc.posterior(dist, proc, t, x, method=method), entry["posterior"]
    assert_close(post.weights, num(g["weights"]), f"{where}: posterior weights", scale=1.0)
    assert_close(post.means, num(g["means"]), f"{where}: posterior component means", row_ndim=2)
    covs = num(g["covs"])
    assert_close(post.covs, covs, f"{where}: posterior component covs", row_ndim=covs.ndim - 1)
    assert_close(post.mean(), num(g["mean"]), f"{where}: posterior mean", row_ndim=1)
    assert_close(post.cov(), num(g["cov"]), f"{where}: posterior cov", row_ndim=2)


def test_golden_files_cover_every_process_and_target():
    assert {e["process"] for e in ENTRIES} == {"VE", "VP", "SubVP", "Cosine", "EDM"}
    assert {e["target"] for e in ENTRIES} == set(TARGETS)
    assert {TARGETS[n]["type"] for n in TARGETS} == {"GaussianMixture", "Empirical"}
    assert {np.asarray(TARGETS[n]["covs"]).ndim for n in TARGETS if "covs" in TARGETS[n]} == {1, 2, 3}
