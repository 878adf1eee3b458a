"""Fuzz suite (issue 13): every public verb, one argument at a time, fed bad input of many kinds.

Each call site holds every argument valid except one, which receives a variant of its valid value
(wrong type, shape, dtype, NaN/inf, empty, out of domain, boolean, float16/float32, a torch tensor
where NumPy is expected, ...). The contract checked: the call either returns a finite result
(documented: e.g. float32 input is computed in float64, a list is an array) or raises ValueError /
TypeError whose message names the argument. Anything else -- another exception type, a message
that does not say which argument, NaN/inf in a result -- fails.

``test_every_kind_at_every_site`` runs the full (site x kind) product deterministically;
``test_fuzz_random_variants`` lets hypothesis compose variants (random positions of NaN, random
shapes and dtypes) under the suite's profile (derandomised by default; run with
``HYPOTHESIS_PROFILE=explore`` for fresh examples).
"""
from __future__ import annotations

import fractions
import math
import re
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import scoremc as smc
from scoremc.testing import assert_estimator_unbiased, assert_score_close

try:
    import torch
except ImportError:  # pragma: no cover - the torch extra is optional
    torch = None

GM = smc.GaussianMixture([.3, .7], [[0, 1], [2, -1]], [1, .5])
EMP = smc.Empirical([[0.0, 1.0], [2.0, -1.0], [1.0, 1.0]])
X = np.array([[1.0, 0.5], [-0.3, 2.0], [0.0, 0.0], [1.5, -1.0]])
ES = smc.exact_score(GM, smc.VP())


def _nn():
    import scoremc.nn

    return scoremc.nn


def _rng():
    return np.random.default_rng(0)


# ----------------------------------------------------------------------------- kinds of bad input
# each kind maps the valid template of an argument to a variant (or raises _Skip where the kind
# makes no sense for that template)

class _Skip(Exception):
    pass


def _na():
    """The kind does not apply to this template."""
    raise _Skip


def _arr(v):
    return np.asarray(v, dtype=float)


def _with(value, where, v):
    a = _arr(v).copy()
    if a.size == 0:
        raise _Skip
    a.reshape(-1)[where % a.size] = value
    return a


def _torch(v, dtype="float64"):
    if torch is None:
        raise _Skip
    return torch.as_tensor(_arr(v), dtype=getattr(torch, dtype))


KINDS = {
    "none": lambda v: None,
    "string": lambda v: "a",
    "bytes": lambda v: b"1",
    "object": lambda v: object(),
    "dict": lambda v: {},
    "set": lambda v: {1.0},
    "bool": lambda v: True,
    "numpy_bool": lambda v: np.bool_(False),
    "bool_array": lambda v: np.ones(np.shape(v), dtype=bool),
    "complex": lambda v: 1 + 2j,
    "complex_array": lambda v: _arr(v) + 1j,
    "nan": lambda v: math.nan,
    "inf": lambda v: math.inf,
    "minus_inf": lambda v: -math.inf,
    "nan_inside": lambda v: _with(math.nan, 1, v),
    "inf_inside": lambda v: _with(math.inf, 0, v),
    "empty": lambda v: np.empty(0),
    "empty_rows": lambda v: np.empty((0,) + np.shape(v)[1:]) if np.ndim(v) >= 1 else np.empty(0),
    "extra_axis": lambda v: _arr(v)[None],
    "wrong_trailing": lambda v: np.concatenate([_arr(v), _arr(v)[..., :1]], axis=-1) if np.ndim(v) else [1.0, 2.0],
    "scalar_for_array": lambda v: 0.5 if np.ndim(v) else _na(),
    "array_for_scalar": lambda v: np.array([0.3, 0.4, 0.5]) if not np.ndim(v) else _na(),
    "negative": lambda v: -_arr(v) - 1.0,
    "zero": lambda v: np.zeros_like(_arr(v)),
    "negative_zero": lambda v: -np.zeros_like(_arr(v)),
    "huge": lambda v: _arr(v) * 0 + 1e300,
    "subnormal": lambda v: _arr(v) * 0 + 1e-320,
    "tiny": lambda v: _arr(v) * 0 + 1e-300,
    "float16": lambda v: _arr(v).astype(np.float16),
    "float32": lambda v: _arr(v).astype(np.float32),
    "integers": lambda v: np.round(_arr(v)).astype(np.int64),
    "list": lambda v: _arr(v).tolist(),
    "torch_float64": lambda v: _torch(v),
    "torch_float32": lambda v: _torch(v, "float32"),
    "torch_bool": lambda v: _torch(v).bool(),
    "object_array": lambda v: np.array([None, 1.0], dtype=object),
    "ragged": lambda v: [[1.0], [1.0, 2.0]],
    "string_array": lambda v: np.array(["a", "b"]),
    "datetime": lambda v: np.array(["2020-01-01"], dtype="datetime64[D]"),
    "fraction": lambda v: fractions.Fraction(1, 3) if not np.ndim(v) else _na(),
    "float_for_int": lambda v: 2.5,
    "large_int": lambda v: 10**30,
    "negative_int": lambda v: -3,
}


# ----------------------------------------------------------------------------- call sites
# (id, argument name, valid template, call with the argument replaced)

def _sites():
    s = []

    def add(ident, name, template, fn):
        s.append(pytest.param(ident, name, template, fn, id=ident))

    # processes
    add("VE.sigma_min", "sigma_min", 0.01, lambda v: smc.VE(v, 50.0))
    add("VE.sigma_max", "sigma_max", 50.0, lambda v: smc.VE(0.01, v))
    add("VP.beta_min", "beta_min", 0.1, lambda v: smc.VP(v, 20.0))
    add("SubVP.beta_max", "beta_max", 20.0, lambda v: smc.SubVP(0.1, v))
    add("EDM.rho", "rho", 7.0, lambda v: smc.EDM(rho=v))
    add("EDM.sigma_min", "sigma_min", 0.002, lambda v: smc.EDM(sigma_min=v))
    for proc in smc.PROCESSES:
        name = type(proc).__name__
        add(f"{name}.alpha", "t", np.array([0.1, 0.5]), lambda v, p=proc: p.alpha(v))
        add(f"{name}.sigma", "t", 0.5, lambda v, p=proc: p.sigma(v))
        add(f"{name}.g2", "t", 0.5, lambda v, p=proc: p.g2(v))
        add(f"{name}.t_from_sigma", "sigma", 0.5, lambda v, p=proc: p.t_from_sigma(v))
        add(f"{name}.t_from_log_snr", "log_snr", 0.0, lambda v, p=proc: p.t_from_log_snr(v))
        add(f"{name}.drift.x", "x", X, lambda v, p=proc: p.drift(v, 0.5))
    add("EDM.karras_sigma", "u", np.array([0.0, 0.5, 1.0]), lambda v: smc.EDM().karras_sigma(v))
    # noise levels
    add("karras_sigmas.n", "n", 5, lambda v: smc.karras_sigmas(v))
    add("karras_sigmas.rho", "rho", 7.0, lambda v: smc.karras_sigmas(5, rho=v))
    add("karras_sigmas.sigma_min", "sigma_min", 0.002, lambda v: smc.karras_sigmas(5, sigma_min=v))
    add("lognormal_sigmas.p_std", "p_std", 1.2, lambda v: smc.lognormal_sigmas(4, _rng(), p_std=v))
    add("uniform_times.t_min", "t_min", 1e-5, lambda v: smc.uniform_times(4, _rng(), t_min=v))
    add("uniform_times.rng", "rng", 0.0, lambda v: smc.uniform_times(4, v))
    # targets
    means, weights, covs = np.array([[0., 1], [2, -1]]), np.array([.3, .7]), np.array([1., .5])
    add("GaussianMixture.weights", "weights", weights, lambda v: smc.GaussianMixture(v, means, covs))
    add("GaussianMixture.means", "means", means, lambda v: smc.GaussianMixture(weights, v, covs))
    add("GaussianMixture.covs", "covs", covs, lambda v: smc.GaussianMixture(weights, means, v))
    add("GaussianMixture.full_covs", "covs", np.array([np.eye(2), 2 * np.eye(2)]),
        lambda v: smc.GaussianMixture([.3, .7], [[0, 1], [2, -1]], v))
    add("Empirical.points", "points", np.array([[0., 1], [2, -1]]), lambda v: smc.Empirical(v))
    for verb in ("logpdf", "score", "hessian", "divergence"):
        add(f"{verb}.x", "x", X, lambda v, f=verb: getattr(smc, f)(GM, v))
    add("sample.n", "n", 3, lambda v: smc.sample(GM, v, _rng()))
    add("sample.rng", "rng", 0.0, lambda v: smc.sample(GM, 3, v))
    # exact noising
    add("marginal.t", "t", 0.3, lambda v: smc.marginal(GM, smc.VP(), v))
    add("posterior.t", "t", 0.3, lambda v: smc.posterior(GM, smc.VP(), v, X).mean())
    add("posterior.xt", "xt", X, lambda v: smc.posterior(GM, smc.VP(), 0.3, v).mean())
    add("posterior.sample.m", "m", 2, lambda v: smc.posterior(GM, smc.VP(), 0.3, X).sample(v, _rng()))
    add("noised_sample.t", "t", 0.3, lambda v: smc.noised_sample(GM, smc.VP(), v, 3, _rng()))
    for method in ("__call__", "logpdf", "hessian", "divergence", "dt"):
        add(f"exact_score.{method}.x", "x", X, lambda v, m=method: getattr(ES, m)(v, 0.3))
        add(f"exact_score.{method}.t", "t", 0.3, lambda v, m=method: getattr(ES, m)(X, v))
    add("exact_score.empirical.t", "t", 0.3, lambda v: smc.exact_score(EMP, smc.VE())(X, v))
    add("exact_score.edm.t", "t", 1.0, lambda v: smc.exact_score(GM, smc.EDM())(X, v))
    # identities and estimates
    add("Mix.w", "w", 0.5, lambda v: smc.Mix(v))
    add("Mix.w(t)", "w(t)", 0.5, lambda v: smc.estimate(smc.Mix(lambda t: v), GM, smc.VP(), 0.3, X, n=2, rng=_rng()))
    add("STF.n_ref", "n_ref", 2, lambda v: smc.STF(v))
    add("estimate.t", "t", 0.3, lambda v: smc.estimate(smc.DSI(), GM, smc.VP(), v, X, n=2, rng=_rng()))
    add("estimate.xt", "xt", X, lambda v: smc.estimate(smc.DSI(), GM, smc.VP(), 0.3, v, n=2, rng=_rng()))
    add("estimate.n", "n", 2, lambda v: smc.estimate(smc.TSI(), GM, smc.VP(), 0.3, X, n=v, rng=_rng()))
    add("estimate.rng", "rng", 0.0, lambda v: smc.estimate(smc.STF(3), GM, smc.VP(), 0.3, X, n=2, rng=v))
    add("estimate.budget", "budget", 1000, lambda v: smc.estimate(smc.DSI(), GM, smc.VP(), 0.3, X, n=2, rng=_rng(),
                                                                   budget=v))
    add("variance.ts", "ts", np.array([0.3, 0.6]), lambda v: smc.variance(smc.DSI(), GM, smc.VP(), v, n_outer=4,
                                                                          n_inner=4, progress=False))
    add("variance.n_outer", "n_outer", 4, lambda v: smc.variance(smc.DSI(), GM, smc.VP(), [0.5], n_outer=v, n_inner=4,
                                                                 progress=False))
    # preconditioning and conversions
    add("edm_precond.sigma", "sigma", np.array([0.5, 2.0]), lambda v: smc.edm_precond(v))
    add("edm_precond.sigma_data", "sigma_data", 0.5, lambda v: smc.edm_precond(1.0, v))
    add("tsm_precond.alpha", "alpha", np.array([0.5, 0.9]), lambda v: smc.tsm_precond(np.array([1.0, 2.0]), v))
    add("score_from_denoiser.sigma", "sigma", 0.5, lambda v: smc.score_from_denoiser(X, X, 1.0, v))
    add("score_from_denoiser.D", "D", X, lambda v: smc.score_from_denoiser(v, X, 1.0, 0.5))
    add("denoiser_from_score.alpha", "alpha", 0.9, lambda v: smc.denoiser_from_score(X, X, v, 0.5))
    add("score_from_eps.sigma", "sigma", 0.5, lambda v: smc.score_from_eps(X, v))
    # objectives
    add("loss.t", "t", 0.3, lambda v: smc.loss(smc.DSM(), ES, GM, smc.VP(), v, X, X))
    add("loss.x0", "x0", X, lambda v: smc.loss(smc.TSM(), ES, GM, smc.VP(), 0.3, v, X))
    add("loss.eps", "eps", X, lambda v: smc.loss(smc.DSM(), ES, GM, smc.VP(), 0.3, X, v))
    add("MixSM.w", "w", 0.5, lambda v: smc.MixSM(v))
    add("LCSS.gamma", "gamma", 1.0, lambda v: smc.LCSS(v))
    add("FDSSM.eps", "eps", 0.01, lambda v: smc.FDSSM(eps=v))
    add("Hutchinson.n_probes", "n_probes", 1, lambda v: smc.Hutchinson(v))
    add("CentralDifference.step", "step", 1e-3, lambda v: smc.CentralDifference(step=v))
    add("FPRegularized.alpha", "alpha", 0.0015, lambda v: smc.FPRegularized(alpha=v))
    # score-FPE
    add("fpe_residual.x", "x", X, lambda v: smc.fpe_residual(ES, smc.VP(), v, 0.3))
    add("fpe_residual.t", "t", 0.3, lambda v: smc.fpe_residual(ES, smc.VP(), X, v))
    add("fpe_operator.t", "t", 0.3, lambda v: smc.fpe_operator(ES, smc.VP(), X, v))
    add("curl.x", "x", X, lambda v: smc.curl(ES, v, 0.3))
    # the torch layer fed NumPy (and the reference layer fed torch): the other direction
    if torch is not None:
        ref = torch.zeros(3, 2, dtype=torch.float64)
        add("nn.stf_target.xt", "xt", X, lambda v: _nn().stf_target(v, 0.5, ref))
        add("nn.stf_target.sigma", "sigma", 0.5, lambda v: _nn().stf_target(torch.as_tensor(X), v, ref))
        add("stf_target.ref", "ref", np.zeros((3, 2)), lambda v: smc.stf_target(torch.as_tensor(X), 0.5, v))
        _torch_layer_sites(add)
    # the testing toolkit (a check must never pass without checking)
    add("assert_score_close.rtol", "rtol", 0.05, lambda v: assert_score_close(ES, GM, smc.VP(), rtol=v, ts=[0.5], n=8))
    add("assert_score_close.ts", "ts", np.array([0.5]), lambda v: assert_score_close(ES, GM, smc.VP(), ts=v, n=8))
    add("assert_estimator_unbiased.level", "level", 1e-3,
        lambda v: assert_estimator_unbiased(smc.TSI(), GM, smc.VP(), level=v, ts=[0.5], n=20, n_points=1))
    return s


def _model():
    """A tiny preconditioned MLP (fixed weights) for the torch layer's verbs."""
    nn = _nn()
    torch.manual_seed(0)
    return nn.Preconditioned(nn.ScoreMLP(2, hidden=16, depth=1, embedding=16), smc.VE()).double().eval()


def _torch_layer_sites(add):
    """scoremc.nn's public verbs and types (samplers, training settings, likelihood, metrics)."""
    nn = _nn()
    VE = smc.VE()

    def gen():
        return torch.Generator().manual_seed(0)

    add("nn.EulerMaruyama.steps", "steps", 10, lambda v: nn.EulerMaruyama(v))
    # (Heun's s_tmax defaults to inf, a documented non-finite field: the sites return the argument's field)
    add("nn.Heun.rho", "rho", 7.0, lambda v: nn.Heun(4, rho=v).rho)
    add("nn.Heun.churn", "churn", 0.0, lambda v: nn.Heun(4, churn=v).churn)
    add("nn.PredictorCorrector.snr", "snr", 0.16, lambda v: nn.PredictorCorrector(4, snr=v))
    add("nn.TrainConfig.lr", "lr", 1e-3, lambda v: nn.TrainConfig(lr=v))
    add("nn.TrainConfig.batch_size", "batch_size", 256, lambda v: nn.TrainConfig(batch_size=v))
    add("nn.TrainConfig.ema", "ema", 0.999, lambda v: nn.TrainConfig(ema=v))
    add("nn.ScoreMLP.hidden", "hidden", 16, lambda v: nn.ScoreMLP(2, hidden=v))
    add("nn.LogNormalSigmas.p_std", "p_std", 1.2, lambda v: nn.LogNormalSigmas(p_std=v))
    add("nn.Preconditioned.sigma_data", "sigma_data", 1.0,
        lambda v: nn.Preconditioned(nn.ScoreMLP(2, hidden=8, depth=1, embedding=8), VE, sigma_data=v))
    add("nn.sample.n", "n", 4, lambda v: nn.sample(_model(), VE, nn.EulerMaruyama(4), n=v, dim=2, generator=gen(),
                                                   dtype=torch.float64, progress=False))
    add("nn.sample.x_T", "x_T", X, lambda v: nn.sample(_model(), VE, nn.EulerMaruyama(4), x_T=v, generator=gen(),
                                                        progress=False))
    add("nn.log_likelihood.x", "x", X, lambda v: nn.log_likelihood(_model(), VE, v, rtol=1e-2, atol=1e-2))
    add("nn.log_likelihood.rtol", "rtol", 1e-2, lambda v: nn.log_likelihood(_model(), VE, torch.as_tensor(X[:2]), rtol=v,
                                                                       atol=1e-2))
    add("nn.relative_score_error.ts", "ts", np.array([0.5]),
        lambda v: nn.relative_score_error(_model(), GM, VE, v, n=16))
    add("nn.mmd.x", "x", X, lambda v: nn.mmd(v, torch.as_tensor(X)))
    add("nn.median_bandwidth.x", "x", X, lambda v: nn.median_bandwidth(v, torch.as_tensor(X)))
    add("nn.sliced_wasserstein.n_projections", "n_projections", 8,
        lambda v: nn.sliced_wasserstein(torch.as_tensor(X), torch.as_tensor(X) + 1, n_projections=v, generator=gen()))


SITES = _sites()

#: where the message may name another argument that says the same: the loss evaluates the score at
#: x_t = alpha x0 + sigma eps, so an x0/eps whose x_t overflows is reported as "x"; a preconditioning
#: coefficient that overflows names "sigma, alpha or sigma_data" together
ALIASES = {"loss.x0": ("x",), "loss.eps": ("x",)}


# ----------------------------------------------------------------------------- the contract

def _names(message: str, name: str) -> bool:
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(name)}(?![A-Za-z0-9_])", message) is not None


def _finite(out) -> bool:
    if out is None or isinstance(out, (str, bool)):
        return True
    if torch is not None and isinstance(out, torch.Tensor):
        return bool(torch.isfinite(out.detach()).all())
    if isinstance(out, (tuple, list)):
        return all(_finite(o) for o in out)
    if isinstance(out, (np.ndarray, np.generic, float, int)):
        a = np.asarray(out)
        return a.dtype.kind not in "fc" or bool(np.isfinite(a).all())
    if hasattr(out, "data_vars"):  # an xarray Dataset: NaN marks entries that do not apply (documented)
        return True
    fields = getattr(out, "__dataclass_fields__", None)
    if fields:  # a frozen type (a process, an identity, a Precond): its numeric fields
        return all(_finite(getattr(out, f)) for f in fields if isinstance(getattr(out, f, None),
                                                                           (float, np.ndarray, np.generic)))
    return True


def check_contract(ident, name, fn, value):
    """Run ``fn(value)``; fail unless it returns a finite result or raises ValueError/TypeError naming
    ``name``. Returns "ok" or "raised" (for the coverage count)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out = fn(value)
        except (ValueError, TypeError) as exc:
            named = _names(str(exc), name) or any(_names(str(exc), a) for a in ALIASES.get(ident, ()))
            assert named, (f"{ident}: {type(exc).__name__} does not name {name!r}: {exc}"
                                             f"  [input {value!r:.80}]")
            return "raised"
        except AssertionError as exc:  # a testing assertion may fail on bad tolerances: that is a check run
            raise AssertionError(f"{ident}: an assertion ran instead of refusing {name}={value!r:.80}: "
                                 f"{str(exc)[:200]}") from None
        except Exception as exc:  # the point: any other type is a failure
            raise AssertionError(f"{ident}: {type(exc).__name__} (not ValueError/TypeError) for {name}="
                                 f"{value!r:.80}: {exc}") from exc
    assert _finite(out), f"{ident}: non-finite result for {name}={value!r:.80}"
    return "ok"


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize(("ident", "name", "template", "fn"), SITES)
def test_every_kind_at_every_site(ident, name, template, fn, kind):
    try:
        value = KINDS[kind](template)
    except _Skip:
        pytest.skip(f"{kind} does not apply to {name}")
    check_contract(ident, name, fn, value)


def test_fuzz_covers_at_least_30_kinds_and_every_public_verb_family():
    assert len(KINDS) >= 30
    sites = {p.values[0].split(".")[0] for p in SITES}
    for verb in ("VE", "VP", "SubVP", "EDM", "Cosine", "karras_sigmas", "GaussianMixture", "Empirical", "score",
                 "logpdf", "sample", "marginal", "posterior", "exact_score", "estimate", "variance", "Mix", "STF",
                 "edm_precond", "tsm_precond", "loss", "fpe_residual", "fpe_operator", "assert_score_close"):
        assert verb in sites, verb


# hypothesis: compose variants -- a random site, a random kind, then random perturbations of the
# kind's output (another dtype, another NaN position, a random shape)

_dtypes = st.sampled_from([None, np.float16, np.float32, np.float64, np.int32])


@st.composite
def _variants(draw):
    site = draw(st.sampled_from(SITES)).values
    ident, name, template, fn = site
    kind = draw(st.sampled_from(sorted(KINDS)))
    try:
        value = KINDS[kind](template)
    except _Skip:
        value = template
    how = draw(st.sampled_from(["as_is", "dtype", "poke", "reshape", "scale"]))
    if isinstance(value, np.ndarray) and value.dtype.kind in "fiu":
        if how == "dtype":
            dt = draw(_dtypes)
            if dt is not None:
                with np.errstate(all="ignore"):
                    value = value.astype(dt)
        elif how == "poke" and value.size:
            value = value.astype(float).copy()
            i = draw(st.integers(0, value.size - 1))
            value.reshape(-1)[i] = draw(st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -1.0, 1e308, 5e-324]))
        elif how == "reshape":
            shape = tuple(draw(st.lists(st.integers(0, 3), min_size=0, max_size=3)))
            value = np.resize(value.astype(float), shape) if value.size else np.zeros(shape)
        elif how == "scale":
            with np.errstate(all="ignore"):
                value = value.astype(float) * draw(st.sampled_from([-1.0, 1e-300, 1e150, 1e300, 0.0]))
    return ident, name, fn, value


# five times the profile's example count: 200 in the derandomised default profile, 1500 under explore
@settings(max_examples=5 * settings.default.max_examples)
@given(_variants())
def test_fuzz_random_variants(case):
    ident, name, fn, value = case
    check_contract(ident, name, fn, value)
