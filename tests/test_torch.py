"""One formula, two array libraries: every objective, target law and exact score on torch tensors
equals the NumPy float64 reference, and its autograd equals finite differences of the reference.

The model is a one-hidden-layer tanh network s(x, t) = W2 tanh(W1 x + w_t t + b1) + b2 (d -> 8 -> d),
as a ``torch.nn.Module`` and as a NumPy twin with hand-derived derivatives (an ``AnalyticScore``), so
that objectives needing derivatives run with ``Exact()`` in NumPy and ``Autograd()`` on torch.

Tolerances are relative to a per-row round-off scale S_i (:func:`loss_scale`, :func:`law_scales`): the
largest per-sample value of the batch plus the magnitudes of the operands that the formula subtracts
(the conditioning term). The float64 bound 1e-12 is ~4500 u64 and the float32 bound 1e-5 ~80 u32
(u = machine epsilon) times that scale. For float32 the NumPy reference is evaluated at the
float32-rounded inputs (x0, eps, t, parameters, probes), so that the comparison measures the
computation's round-off, not the rounding of its inputs.
"""
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import scoremc as smc  # noqa: E402
from scoremc.testing import empirical_targets, gaussian_mixtures, processes, times  # noqa: E402

RTOL = {torch.float64: 1e-12, torch.float32: 1e-5}
DTYPES = [torch.float64, torch.float32]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]
HIDDEN = 8
NAMES = ("W1", "wt", "b1", "W2", "b2")


def _norm(a):
    return np.sqrt(np.sum(np.square(a), axis=-1))


# -- the model: a torch module and its NumPy twin with closed-form derivatives --------------------------


def mlp_params(d: int, seed: int, h: int = HIDDEN) -> dict:
    r = np.random.default_rng(seed)
    return dict(W1=r.normal(0, 1 / np.sqrt(d), (h, d)), wt=r.normal(0, 0.5, h), b1=r.normal(0, 0.5, h),
                W2=r.normal(0, 1 / np.sqrt(h), (d, h)), b2=r.normal(0, 0.5, d))


def flatten(p: dict) -> np.ndarray:
    return np.concatenate([np.ravel(p[k]) for k in NAMES])


def unflatten(theta: np.ndarray, like: dict) -> dict:
    out, i = {}, 0
    for k in NAMES:
        n = like[k].size
        out[k] = theta[i:i + n].reshape(like[k].shape)
        i += n
    return out


def rounded(a, dtype):
    """``a`` rounded to ``dtype`` and back to float64 (the exact values a float32 tensor holds)."""
    if dtype == torch.float64:
        return a
    if isinstance(a, dict):
        return {k: rounded(v, dtype) for k, v in a.items()}
    return np.asarray(a, np.float32).astype(np.float64)


class TwinMLP(smc.AnalyticScore):
    """NumPy float64 twin of :class:`TorchMLP`. With a = W1 x + w_t t + b1, h = tanh(a), h' = 1 - h^2,
    h'' = -2 h h': J = W2 diag(h') W1, div = sum_k h'_k c_k with c_k = sum_j W2[j, k] W1[k, j],
    grad div = W1^T (h'' c), d/dt s = W2 (h' w_t). x (..., d), t broadcasting against x.shape[:-1]."""

    def __init__(self, params: dict):
        self.p = {k: np.asarray(v, np.float64) for k, v in params.items()}
        self.c = np.einsum("jk,kj->k", self.p["W2"], self.p["W1"])

    def _hidden(self, x, t):
        x = np.asarray(x, np.float64)
        t = np.broadcast_to(np.asarray(t, np.float64), x.shape[:-1])
        h = np.tanh(x @ self.p["W1"].T + t[..., None] * self.p["wt"] + self.p["b1"])
        return h, 1.0 - h * h

    def __call__(self, x, t):
        return self._hidden(x, t)[0] @ self.p["W2"].T + self.p["b2"]

    def hessian(self, x, t):
        return (self.p["W2"] * self._hidden(x, t)[1][..., None, :]) @ self.p["W1"]

    def divergence(self, x, t):
        return self._hidden(x, t)[1] @ self.c

    def grad_divergence(self, x, t):
        h, dh = self._hidden(x, t)
        return (-2.0 * h * dh * self.c) @ self.p["W1"]

    def dt(self, x, t):
        return (self._hidden(x, t)[1] * self.p["wt"]) @ self.p["W2"].T


class TorchMLP(torch.nn.Module):
    def __init__(self, params: dict, dtype=torch.float64, device="cpu"):
        super().__init__()
        for k in NAMES:
            setattr(self, k, torch.nn.Parameter(torch.tensor(params[k], dtype=dtype, device=device)))

    def forward(self, x, t):
        return torch.tanh(x @ self.W1.T + t[..., None] * self.wt + self.b1) @ self.W2.T + self.b2

    def flat_grad(self) -> np.ndarray:
        return np.concatenate([getattr(self, k).grad.detach().cpu().double().numpy().ravel() for k in NAMES])


# -- the objectives, each as a (NumPy, torch) pair ---------------------------------------------------------


def w_of_t(t):
    """A DSI weight as a callable of t (array-generic arithmetic), in (0, 1)."""
    return t / (1.0 + t)


ALPHA_FP, BETA_FP = 0.5, 0.2
#: FD-SSM's eps. Its quotient v^T (s(x + v) - s(x - v)) / (2 eps^2), |v| ~ eps, carries the round-off of
#: s(x +- v), ~u (|s| + |J| |x|), amplified by |v| / eps^2 ~ 1/eps: relative error ~u |x| / eps. With
#: |x_t| up to ~10 where the network is not saturated, u32 = 1.2e-7 and 1e-5 ~ 80 u32, eps = 0.5 keeps
#: that below the float32 bound (the measured worst case over 300 draws was 1.1e-6; at eps = 0.01 it
#: was 7.5e-5). float64 meets 1e-12 for any eps >~ 1e-3.
FDSSM_EPS = 0.5


@dataclass(frozen=True)
class Case:
    id: str
    make: Callable  # make(probes, on_torch) -> Objective
    kind: str  # the round-off scale of loss_scale: "dsi", "tsi", "mix", "lcss", "stf", "fp", "none"
    gm_only: bool = False  # needs a target with a score (TSM, MixSM)
    ref: Optional[str] = None  # STF reference batch: "shared" (n_ref-1, d) or "rows" (N, n_ref-1, d)
    weighting: object = None
    gamma: float = 1.0
    m: float = 2.0  # FPRegularized's exponent

    def __repr__(self):
        return self.id


def _same(obj):
    return lambda probes, on_torch: obj


def _fp(m):
    return lambda probes, on_torch: smc.FPRegularized(alpha=ALPHA_FP, beta=BETA_FP, m=m, derivatives=(
        smc.Autograd() if on_torch else smc.Exact()))


CASES = [
    Case("dsm", _same(smc.DSM()), "dsi"),
    Case("dsm-weighted", _same(smc.DSM()), "dsi", weighting=smc.EDMWeighting()),
    Case("tsm", _same(smc.TSM()), "tsi", gm_only=True),
    Case("mixsm(0.3)", _same(smc.MixSM(0.3)), "mix", gm_only=True),
    Case("mixsm(kappa)", _same(smc.MixSM(smc.Kappa())), "mix", gm_only=True),
    Case("mixsm(kappa_bar)", _same(smc.MixSM(smc.KappaBar())), "mix", gm_only=True),
    Case("mixsm(w(t))", _same(smc.MixSM(w_of_t)), "mix", gm_only=True),
    Case("stf(4)-shared", _same(smc.STFLoss(4)), "stf", ref="shared"),
    Case("stf(4)-rows", _same(smc.STFLoss(4)), "stf", ref="rows"),
    Case("lcss", _same(smc.LCSS()), "lcss"),
    Case("lcss(0.5)", _same(smc.LCSS(gamma=0.5)), "lcss", gamma=0.5),
    Case("ssm-hutchinson", lambda probes, on_torch: smc.SSM(divergence=smc.Hutchinson(
        probes=probes, jvp=smc.Autograd() if on_torch else smc.Exact())), "none"),
    Case("ssm-exact", lambda probes, on_torch: smc.SSM(divergence=smc.Autograd() if on_torch else smc.Exact()),
         "none"),
    Case("fdssm", lambda probes, on_torch: smc.FDSSM(eps=FDSSM_EPS, probes=smc.Hutchinson(probes=probes)), "none"),
    Case("fp(m=2)", _fp(2), "fp", m=2.0),
    Case("fp(m=1)", _fp(1), "fp", m=1.0),
]


# -- drawn batches ------------------------------------------------------------------------------------------


@dataclass
class Draw:
    dist: object
    proc: object
    t: np.ndarray  # (N,) per-row times
    x0: np.ndarray
    eps: np.ndarray
    probes: np.ndarray  # (2, N, d) fixed Hutchinson probes
    ref: dict  # STF reference batches: "shared" (3, d), "rows" (N, 3, d), from p0
    params: dict

    def rounded(self, dtype) -> "Draw":
        r = lambda a: rounded(a, dtype)  # noqa: E731
        t = r(self.t)
        self.proc.check_t(t)
        return Draw(self.dist, self.proc, t, r(self.x0), r(self.eps), r(self.probes),
                    {k: r(v) for k, v in self.ref.items()}, r(self.params))


@st.composite
def draws(draw, target):
    dist = draw(target)
    proc = draw(processes())
    n = draw(st.integers(5, 8))
    t = np.array(draw(st.lists(times(proc), min_size=n, max_size=n)))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    x0 = smc.sample(dist, n, rng)
    d = dist.dim
    ref = {"shared": smc.sample(dist, 3, rng), "rows": smc.sample(dist, 3 * n, rng).reshape(n, 3, d)}
    return Draw(dist, proc, t, x0, rng.standard_normal(x0.shape), rng.standard_normal((2,) + x0.shape), ref,
                mlp_params(d, seed))


def _targets(case):
    mixtures = gaussian_mixtures(d=st.integers(1, 3))
    if case.gm_only:
        return mixtures
    return st.one_of(mixtures, empirical_targets(d=st.integers(1, 3)))


def numpy_loss(case, b: Draw, params=None, twin=None):
    twin = TwinMLP(b.params if params is None else params) if twin is None else twin
    kw = dict(ref=b.ref[case.ref]) if case.ref else {}
    return smc.loss(case.make(b.probes, False), twin, b.dist, b.proc, b.t, b.x0, b.eps, weighting=case.weighting,
                    **kw)


def torch_loss(case, b: Draw, dtype, device, model=None):
    T = lambda a: torch.as_tensor(a, dtype=dtype, device=device)  # noqa: E731
    model = TorchMLP(b.params, dtype, device) if model is None else model
    kw = dict(ref=T(b.ref[case.ref])) if case.ref else {}
    return smc.loss(case.make(T(b.probes), True), model, b.dist, b.proc, T(b.t), T(b.x0), T(b.eps),
                    weighting=case.weighting, **kw)


# -- round-off scales (independent NumPy float64 formulas) -------------------------------------------------


def _dense_covs(dist):
    k, d = dist.n_components, dist.dim
    if isinstance(dist, smc.Empirical):
        return np.zeros((k, d, d))
    covs = np.asarray(dist.covs)
    if dist.cov_kind == "iso":
        return covs[:, None, None] * np.eye(d)
    if dist.cov_kind == "diag":
        return covs[:, :, None] * np.eye(d)
    return covs


def mixture_operands(dist, x, alpha=1.0, sigma=0.0):
    """Per-row parts of the law of alpha X + sigma eps (X ~ dist) at rows x (N, d), with alpha, sigma scalars
    or (N,): responsibilities r (N, K), component scores u_k = P_k (alpha mu_k - x) (N, K, d), the score s,
    log p, the operand size lam_k = |log pi_k| + |log det(2 pi C_k)| / 2 + |P_k| (|x| + |alpha mu_k|)^2 / 2 of
    each logit (the NumPy fast path expands z^T P_k z = x^T P_k x - 2 x^T P_k m_k + m_k^T P_k m_k),
    ||P_k||_2 and ||alpha mu_k|| (N, K). Independent of scoremc: dense covariances, np.linalg."""
    n, d = x.shape
    a = np.broadcast_to(np.asarray(alpha, np.float64), (n,))
    s = np.broadcast_to(np.asarray(sigma, np.float64), (n,))
    C = a[:, None, None, None] ** 2 * _dense_covs(dist)[None] + s[:, None, None, None] ** 2 * np.eye(d)
    P = np.linalg.inv(C)
    m = a[:, None, None] * np.asarray(dist.means if isinstance(dist, smc.GaussianMixture) else dist.points)[None]
    z = x[:, None, :] - m
    u = -np.einsum("nkij,nkj->nki", P, z)
    quad = -np.einsum("nki,nki->nk", z, u)
    logdet = np.linalg.slogdet(2 * np.pi * C)[1]
    with np.errstate(divide="ignore"):
        logw = np.log(np.asarray(dist.weights))
    ell = logw - 0.5 * logdet - 0.5 * quad
    top = ell.max(1, keepdims=True)
    r = np.exp(ell - top)
    logp = np.log(r.sum(1)) + top[:, 0]
    r /= r.sum(1, keepdims=True)
    score = np.einsum("nk,nki->ni", r, u)
    Pn, mn, xn = np.linalg.norm(P, ord=2, axis=(-2, -1)), _norm(m), _norm(x)
    lam = np.abs(logw) + 0.5 * np.abs(logdet) + 0.5 * Pn * (xn[:, None] + mn) ** 2
    return dict(r=r, u=u, s=score, logp=logp, lam=lam, P=Pn, m=mn, x=xn)


def score_operands(o):
    """Round-off scale of the mixture score s = sum_k r_k u_k per row: the operands of P_k (alpha mu_k - x),
    and the logit errors u lam_k moving the responsibilities, times |u_k| (not |u_k - s|: r_k = exp(l_k - lse)
    sums to one only to u max_k |l_k|, so the error has a part along s too)."""
    return _norm(o["s"]) + np.sum(o["r"] * (o["P"] * (o["m"] + o["x"][:, None]) + o["lam"] * _norm(o["u"])), 1)


def hessian_operands(o):
    """Round-off scale of H = sum_k r_k (u_k u_k^T - P_k) - s s^T (and of its trace)."""
    un = _norm(o["u"])
    return np.sum(o["r"] * ((1 + o["lam"]) * (o["P"] + un**2) + 2 * un * o["P"] * (o["m"] + o["x"][:, None])),
                  1) + _norm(o["s"]) ** 2


def loss_scale(case, b: Draw, loss64, twin=None):
    """S_i = max_j |loss_j| + K_i, K_i the round-off amplification of the row's regression target
    (0 for SSM and FD-SSM, whose terms are plain sums). A target L with round-off delta L makes
    ||s - L||^2 err by 2 (|s| + |L|) delta L; delta L / u is:

    * DSI, (alpha x0 - x_t) / sigma^2 with a rounded x_t: (alpha |x0| + |x_t|) / sigma^2 (cancellation: the
      difference is only -sigma eps, so float32 loses log10(alpha |x0| / (sigma |eps|)) digits here);
    * TSI, score(x0) / alpha: :func:`score_operands` / alpha;
    * STF: the DSI operands of every reference point, plus the logit operands
      (alpha |x_k| |x_t| + alpha^2 |x_k|^2 / 2) / sigma^2 of the expanded logits of ``stf_target`` moving the
      weights, times |D_k - L| (weighted by w_k).

    FP-regularised adds its FPE terms: eps[s] = d/dt s - 1/2 g^2 grad div s - g^2 J^T s + f (s + J^T x) is
    small where these cancel, so delta eps / u is the sum of their sizes, entering alpha / d^m m |eps|^(m-1)
    delta eps; beta |L[s]| adds beta times the sizes of the terms of L[s].
    """
    al, sg = np.asarray(b.proc.alpha(b.t)), np.asarray(b.proc.sigma(b.t))
    xt = al[:, None] * b.x0 + sg[:, None] * b.eps
    twin = TwinMLP(b.params) if twin is None else twin
    s = _norm(twin(xt, b.t))
    dsi_ops = (al * _norm(b.x0) + _norm(xt)) / sg**2
    dsi = _norm(b.eps) / sg  # |L_DSI| = |eps| / sigma
    base = np.max(np.abs(loss64))
    if case.kind == "none":
        K = 0.0
    elif case.kind in ("dsi", "fp"):
        K = 2 * (s + dsi) * dsi_ops
        if case.kind == "fp":
            g2, f = np.asarray(b.proc.g2(b.t)), np.abs(np.asarray(b.proc.drift_coef(b.t)))
            d = b.x0.shape[1]
            sv, J, dt, _, res = fpe_parts(twin, b.proc, xt, b.t)
            Jn, xn = np.sqrt(np.sum(J * J, axis=(-2, -1))), _norm(xt)
            res_ops = (0.5 * g2 * _norm(twin.grad_divergence(xt, b.t)) + g2 * Jn * s + f * (s + Jn * xn)
                       + _norm(dt))
            L_ops = 0.5 * g2 * (np.abs(twin.divergence(xt, b.t)) + s**2) + f * (xn * s + d)
            K = (K * 0.5 * g2 + ALPHA_FP / d**case.m * case.m * _norm(res) ** (case.m - 1) * res_ops
                 + BETA_FP * L_ops)
        if case.weighting is not None:
            K = K * np.asarray(case.weighting.score_space(b.proc, b.t))
    elif case.kind == "lcss":
        K = abs(case.gamma) * s * dsi_ops
    elif case.kind in ("tsi", "mix"):
        o = mixture_operands(b.dist, b.x0)
        tsi, tsi_ops = _norm(o["s"]) / al, score_operands(o) / al
        K = 2 * (s + tsi) * tsi_ops if case.kind == "tsi" else 2 * (s + tsi + dsi) * (tsi_ops + dsi_ops)
    elif case.kind == "stf":
        others = np.broadcast_to(b.ref[case.ref], (len(b.t),) + b.ref["rows"].shape[1:])
        refs = np.concatenate([b.x0[:, None], others], axis=1)
        a3, s3 = al[:, None, None], sg[:, None, None]
        D = (a3 * refs - xt[:, None]) / s3**2
        logits = -0.5 * np.sum(np.square(xt[:, None] - a3 * refs), -1) / sg[:, None] ** 2
        w = np.exp(logits - logits.max(1, keepdims=True))
        w /= w.sum(1, keepdims=True)
        L = np.einsum("nk,nkd->nd", w, D)
        rn = _norm(refs)
        logit_ops = (al[:, None] * rn * _norm(xt)[:, None] + 0.5 * al[:, None] ** 2 * rn**2) / sg[:, None] ** 2
        ops = np.sum(w * ((al[:, None] * rn + _norm(xt)[:, None]) / sg[:, None] ** 2
                          + logit_ops * _norm(D - L[:, None])), 1)
        K = 2 * (s + _norm(L)) * ops
    else:  # pragma: no cover
        raise ValueError(case.kind)
    return base + K


def assert_scaled_close(actual, expected, scale, rtol, what=""):
    actual = actual.detach().cpu().double().numpy() if isinstance(actual, torch.Tensor) else np.asarray(actual)
    err = np.abs(actual - expected)
    worst = np.max(err / scale)
    assert worst <= rtol, f"{what}: max |a - b| / scale = {worst:.3g} > {rtol:g} (max |a - b| = {err.max():.3g})"


# -- the twin itself ----------------------------------------------------------------------------------------


@settings(max_examples=10)
@given(d=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
def test_twin_derivatives_equal_finite_differences(d, seed):
    rng = np.random.default_rng(seed)
    twin = TwinMLP(mlp_params(d, seed))
    x, t = rng.normal(0, 2, (6, d)), rng.uniform(0, 1, 6)
    # central differences with h = 1e-5: truncation h^2 |s'''| / 6 ~ 1e-10, round-off u / h ~ 1e-11 (the
    # network's derivatives are O(1) for these parameter and input scales)
    h, tol = 1e-5, 1e-8
    E = np.eye(d)
    J = np.stack([(twin(x + h * e, t) - twin(x - h * e, t)) / (2 * h) for e in E], axis=-1)
    np.testing.assert_allclose(twin.hessian(x, t), J, rtol=0, atol=tol)
    np.testing.assert_allclose(twin.divergence(x, t), np.trace(J, axis1=-2, axis2=-1), rtol=0, atol=tol * d)
    grad_div = np.stack([(twin.divergence(x + h * e, t) - twin.divergence(x - h * e, t)) / (2 * h) for e in E], -1)
    np.testing.assert_allclose(twin.grad_divergence(x, t), grad_div, rtol=0, atol=tol)
    np.testing.assert_allclose(twin.dt(x, t), (twin(x, t + h) - twin(x, t - h)) / (2 * h), rtol=0, atol=tol)
    # batch dims and a shared scalar t broadcast like the AnalyticScore contract says
    assert twin.hessian(x[None], 0.5).shape == (1, 6, d, d)
    np.testing.assert_allclose(twin(x[None], 0.5)[0], twin(x, np.full(6, 0.5)), rtol=0, atol=0)
    # the torch module computes the same function
    out = TorchMLP(twin.p)(torch.tensor(x), torch.tensor(t)).detach().numpy()
    np.testing.assert_allclose(out, twin(x, t), rtol=1e-14, atol=1e-14)


# -- objectives: torch equals NumPy, autograd equals finite differences ------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=repr)
def test_loss_on_torch_equals_numpy(case, device):
    @settings(max_examples=25)
    @given(b=draws(_targets(case)))
    def check(b):
        for dtype in DTYPES:
            bd = b.rounded(dtype)
            expected = numpy_loss(case, bd)
            out = torch_loss(case, bd, dtype, device)
            assert out.shape == (len(b.t),) and out.dtype == dtype and out.device.type == device
            assert out.requires_grad  # differentiable for the module's parameters
            assert_scaled_close(out, expected, loss_scale(case, bd, expected), RTOL[dtype], f"{case.id} {dtype}")

    check()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=repr)
def test_loss_gradient_equals_finite_differences_of_numpy(case, device):
    @settings(max_examples=6)
    @given(b=draws(_targets(case)))
    def check(b):
        model = TorchMLP(b.params, torch.float64, device)
        torch_loss(case, b, torch.float64, device, model).mean().backward()
        theta = flatten(b.params)
        # central differences of the NumPy mean loss F, step h = 1e-6 (the parameters are O(1)): truncation
        # h^2 |F'''| / 6 ~ 1e-12 |x|^3 |F|, round-off ~u |loss| / h ~ 2e-10 |loss| (x_t and the regression
        # targets do not depend on the parameters: bit-identical in both evaluations, their round-off
        # cancels). Tolerance 1e-6 relative to max |gradient| + max |loss|.
        h = 1e-6
        fd = np.empty_like(theta)
        for j in range(theta.size):
            e = np.zeros_like(theta)
            e[j] = h
            fd[j] = (numpy_loss(case, b, unflatten(theta + e, b.params)).mean()
                     - numpy_loss(case, b, unflatten(theta - e, b.params)).mean()) / (2 * h)
        scale = np.max(np.abs(fd)) + np.max(np.abs(numpy_loss(case, b)))
        assert_scaled_close(model.flat_grad(), fd, scale, 1e-6, f"{case.id} gradient")

    check()



@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("m", [1, 1.5, 2])
def test_fp_regularized_gradient_is_finite_where_the_residual_vanishes(m, device):
    # a saturated network (tanh(50) = 1 and h' = 0 in float64) is constant in x and t, so under VE (f = 0)
    # its FPE residual is exactly 0 at every row: ||eps||^m has the subgradient 0 there, not inf * 0 = NaN
    # (the regression: (sum eps^2)^(m/2) back-propagated NaN into every parameter for m < 2)
    b, T, _ = _fixed(device)
    params = dict(b.params, b1=np.full(HIDDEN, 50.0))
    model = TorchMLP(params, torch.float64, device)
    obj = smc.FPRegularized(alpha=ALPHA_FP, beta=0.0, m=m, derivatives=smc.Autograd())
    proc = smc.VE()
    out = smc.loss(obj, model, b.dist, proc, T(b.t), T(b.x0), T(b.eps))
    out.mean().backward()
    grad = model.flat_grad()
    assert np.all(np.isfinite(grad))
    # the residual term is 0, so the loss and its gradient are those of the DSM part alone
    dsm = smc.loss(smc.FPRegularized(alpha=0.0, beta=0.0), TwinMLP(params), b.dist, proc, b.t, b.x0, b.eps)
    np.testing.assert_allclose(out.detach().cpu().numpy(), dsm, rtol=1e-14)


# -- the score-FPE residual of a non-conservative analytic field (J not symmetric) --------------------------


def fpe_parts(twin, proc, x, t):
    """(s, J, d/dt s, L[s], eps[s]) of the twin at rows x, t from the hand formulas: L = 1/2 g^2 (div s + |s|^2)
    - f <x, s> - f d and grad_x L = 1/2 g^2 grad div s + g^2 J^T s - f (s + J^T x)."""
    g2, f = np.asarray(proc.g2(t))[:, None], np.asarray(proc.drift_coef(t))[:, None]
    s, J, dt = twin(x, t), twin.hessian(x, t), twin.dt(x, t)
    JTs, JTx = np.einsum("nji,nj->ni", J, s), np.einsum("nji,nj->ni", J, x)
    L = (0.5 * g2[:, 0] * (twin.divergence(x, t) + np.sum(s * s, -1)) - f[:, 0] * np.sum(x * s, -1)
         - f[:, 0] * x.shape[1])
    grad_L = 0.5 * g2 * twin.grad_divergence(x, t) + g2 * JTs - f * (s + JTx)
    return s, J, dt, L, dt - grad_L


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=10)
@given(d=st.integers(2, 3), proc=processes(), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_fpe_residual_of_a_network_uses_the_transposed_jacobian(device, d, proc, seed, data):
    # grad_x |s|^2 = 2 J^T s and grad_x <x, s> = s + J^T x: J s would be right only for a symmetric J (an
    # exact score); a network's J is not symmetric (regression: Exact() used J s)
    rng = np.random.default_rng(seed)
    twin = TwinMLP(mlp_params(d, seed))
    x = rng.normal(0, 2, (6, d))
    t = np.array(data.draw(st.lists(times(proc), min_size=6, max_size=6)))
    s, J, dt, L, res = fpe_parts(twin, proc, x, t)
    assume(np.max(np.abs(J - np.swapaxes(J, -1, -2))) > 1e-3 * np.max(np.abs(J)))
    scale = np.max(np.abs(res)) + np.max(np.abs(dt))  # the residual's terms, per batch
    np.testing.assert_allclose(smc.fpe_residual(twin, proc, x, t, derivatives=smc.Exact()), res, rtol=0,
                               atol=1e-12 * scale)
    T = lambda a: torch.tensor(a, dtype=torch.float64, device=device)  # noqa: E731
    model = TorchMLP(twin.p, torch.float64, device)
    assert_scaled_close(smc.fpe_residual(model, proc, T(x), T(t), derivatives=smc.Autograd()), res, scale, 1e-12,
                        "autograd residual")
    assert_scaled_close(smc.fpe_operator(model, proc, T(x), T(t), derivatives=smc.Autograd()), L,
                        np.max(np.abs(L)) + 1.0, 1e-12, "autograd operator")


# -- central differences on both sides ----------------------------------------------------------------------

#: absolute spatial steps of the central-difference sources, per dtype
CD_STEP = {torch.float64: 1e-3, torch.float32: 1e-2}


def fd_roundoff(b: Draw, h: float):
    """Round-off magnitudes (in units of u) of central differences at the batch's x_t:
    first[i] = (|s| + |J|_F (|x_t| + h)) / h, for the rounding of s(x +- h e_j) and of x +- h e_j;
    L_ops[i] of L[s] = 1/2 g^2 (div_h s + |s|^2) - f <x, s> - f d with div_h by central differences;
    dt_ops[i] of the 3-point time stencil (coefficients summing to at most 4 / min(h_s, h_d) in absolute value,
    t + offset rounded); and |eps[s]| (the exact residual, from the twin)."""
    from scoremc.fpe import H_D, H_S

    al, sg = np.asarray(b.proc.alpha(b.t)), np.asarray(b.proc.sigma(b.t))
    xt = al[:, None] * b.x0 + sg[:, None] * b.eps
    twin = TwinMLP(b.params)
    s, J, dt, _, res = fpe_parts(twin, b.proc, xt, b.t)
    g2, f = np.asarray(b.proc.g2(b.t)), np.asarray(b.proc.drift_coef(b.t))
    d = xt.shape[1]
    first = (_norm(s) + np.sqrt(np.sum(J * J, axis=(-2, -1))) * (_norm(xt) + h)) / h
    L_ops = 0.5 * g2 * (d * first + _norm(s) ** 2) + np.abs(f) * (_norm(xt) * _norm(s) + d)
    dt_ops = (_norm(s) + _norm(dt) * (np.abs(b.t) + 2 * H_S)) * 4 / min(H_S, H_D)
    return first, L_ops, dt_ops, _norm(res)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("what,dtype", [("ssm", torch.float64), ("ssm", torch.float32), ("fp", torch.float64)])
def test_central_difference_sources_agree_to_their_roundoff(what, dtype, device):
    # SSM: div_h s / d has round-off u * first (eps/h). FP-regularised (m = 2): grad_x L by central differences
    # of L, whose div_h is itself a central difference: round-off u L_ops / h (eps/h^2), plus the time stencil's
    # u dt_ops, entering 2 alpha / d^2 |eps[s]| delta eps[s]; beta |L| adds beta u L_ops. The bound is 64 u times
    # these plus the loss scale S (64: a few dozen rounded operations on each side; the worst of 5000 draws was
    # ~20). float32 FP-regularised is left out: its time stencil (h_d = 5e-4) has
    # round-off u32 t / h_d, 1e-2 relative at EDM's t = 80.
    h, u = CD_STEP[dtype], float(torch.finfo(dtype).eps)
    source = smc.CentralDifference(step=h)
    obj = smc.SSM(divergence=source) if what == "ssm" else smc.FPRegularized(alpha=ALPHA_FP, beta=BETA_FP, m=2,
                                                                            derivatives=source)
    case = Case(f"{what}-cd", _same(obj), "none" if what == "ssm" else "fp")
    targets = st.one_of(gaussian_mixtures(d=st.integers(1, 3)), empirical_targets(d=st.integers(1, 3)))

    @settings(max_examples=15)
    @given(b=draws(targets))
    def check(b):
        bd = b.rounded(dtype)
        expected = numpy_loss(case, bd)
        out = torch_loss(case, bd, dtype, device)
        assert out.dtype == dtype and out.requires_grad
        first, L_ops, dt_ops, res = fd_roundoff(bd, h)
        d = b.x0.shape[1]
        fd = first if what == "ssm" else ALPHA_FP / d**2 * 2 * res * (L_ops / h + dt_ops) + BETA_FP * L_ops
        assert_scaled_close(out, expected, u * (loss_scale(case, bd, expected) + fd), 64.0, f"{what} {dtype}")

    check()


# -- exact laws on torch ------------------------------------------------------------------------------------


def law_scales(dist, x, alpha=1.0, sigma=0.0, dalpha=0.0, dsigma=0.0):
    """Per-row round-off scales (in units of u, shaped to broadcast against each quantity) of the exact laws of
    alpha X + sigma eps at rows x: logpdf (|log p| + the logits' operands sum_k r_k lam_k), score
    (:func:`score_operands`), Hessian and divergence (:func:`hessian_operands`, times d for the trace),
    grad div (one more x-derivative: the Hessian's operands times |u_k| + |P_k|^(1/2), times d), and d/dt
    of the score: the relative rate rho = 2 |alpha'| / alpha + 2 |sigma'| / sigma of the component means and
    variances times the score's and Hessian's operands (its terms are theirs, each carrying an alpha' or
    sigma')."""
    o = mixture_operands(dist, x, alpha, sigma)
    d = x.shape[1]
    lp = np.abs(o["logp"]) + np.sum(o["r"] * o["lam"], 1)
    sc, he = score_operands(o), hessian_operands(o)
    gd = he * np.sum(o["r"] * (_norm(o["u"]) + np.sqrt(o["P"])), 1) * d
    rho = 2 * np.abs(dalpha) / np.asarray(alpha) + 2 * np.abs(dsigma) / np.maximum(np.asarray(sigma), 1e-300)
    dt = rho * (sc + he * (o["x"] + np.max(o["m"], 1)))
    return {"logpdf": lp, "score": sc[:, None], "__call__": sc[:, None], "hessian": he[:, None, None],
            "divergence": he * d, "grad_divergence": gd[:, None], "dt": dt[:, None]}


def _tensor(a, dtype, device, grad=False):
    return torch.tensor(a, dtype=dtype, device=device, requires_grad=grad)


def _points(dist, n, rng, alpha=1.0, sigma=0.0):
    """n draws of alpha X + sigma eps, X ~ dist (alpha, sigma scalars or per row (n,)): rows where the law has mass."""
    return (np.asarray(alpha)[..., None] * smc.sample(dist, n, rng)
            + np.asarray(sigma)[..., None] * rng.standard_normal((n, dist.dim)))


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=25)
@given(dist=gaussian_mixtures(d=st.integers(1, 3)), seed=st.integers(0, 2**32 - 1))
def test_mixture_laws_on_torch_equal_numpy(device, dist, seed):
    rng = np.random.default_rng(seed)
    x64 = _points(dist, 6, rng) + rng.normal(0, 1, (6, dist.dim))
    for dtype in DTYPES:
        x = rounded(x64, dtype)
        scales = law_scales(dist, x)
        u_tol = RTOL[dtype]
        for verb in (smc.logpdf, smc.score, smc.hessian, smc.divergence):
            out = verb(dist, _tensor(x, dtype, device))
            assert out.dtype == dtype and out.device.type == device
            for method in ("fast", "reference"):
                assert_scaled_close(out, verb(dist, x, method=method), scales[verb.__name__], u_tol,
                                    f"{verb.__name__} {dtype} {dist.cov_kind}")
        # batch dimensions are kept
        assert smc.score(dist, _tensor(x[None], dtype, device)).shape == (1, 6, dist.dim)


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=20)
@given(dist=st.one_of(gaussian_mixtures(d=st.integers(1, 3)), empirical_targets(d=st.integers(1, 3))),
       proc=processes(), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_marginal_laws_on_torch_equal_numpy(device, dist, proc, seed, data):
    t = data.draw(times(proc))
    m = smc.marginal(dist, proc, t)
    x64 = _points(m, 6, np.random.default_rng(seed))
    for dtype in DTYPES:
        x = rounded(x64, dtype)
        scales = law_scales(m, x)
        for verb in (smc.logpdf, smc.score, smc.hessian, smc.divergence):
            assert_scaled_close(verb(m, _tensor(x, dtype, device)), verb(m, x), scales[verb.__name__], RTOL[dtype],
                                f"marginal {verb.__name__} {dtype}")


EXACT_METHODS = ("__call__", "logpdf", "hessian", "divergence", "dt", "grad_divergence")


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=25)
@given(dist=st.one_of(gaussian_mixtures(d=st.integers(1, 3)), empirical_targets(d=st.integers(1, 3))),
       proc=processes(), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_exact_score_on_torch_with_per_row_times_equals_numpy(device, dist, proc, seed, data):
    n = 6
    t64 = np.array(data.draw(st.lists(times(proc), min_size=n, max_size=n)))
    es = smc.exact_score(dist, proc)
    rng = np.random.default_rng(seed)
    x64 = _points(dist, n, rng, proc.alpha(t64), proc.sigma(t64))
    for dtype in DTYPES:
        x, t = rounded(x64, dtype), rounded(t64, dtype)
        c = proc.at(t)
        scales = law_scales(dist, x, c.alpha, c.sigma, c.dalpha, c.dsigma)
        for name in EXACT_METHODS:
            out = getattr(es, name)(_tensor(x, dtype, device), _tensor(t, dtype, device))
            assert out.dtype == dtype and out.device.type == device
            assert_scaled_close(out, getattr(es, name)(x, t), scales[name], RTOL[dtype], f"exact {name} {dtype}")
        # row by row at a shared scalar time, NumPy takes the independent fast (BLAS + Numba) path
        for name, key in (("__call__", "score"), ("logpdf", "logpdf")):
            rows = np.concatenate([np.atleast_1d(getattr(es, name)(x[i:i + 1], t[i])) for i in range(n)])
            out = getattr(es, name)(_tensor(x, dtype, device), _tensor(t, dtype, device))
            assert_scaled_close(out, rows.reshape(out.shape), scales[key], RTOL[dtype], f"exact {name} fast {dtype}")
        # a scalar time on torch equals per-row times all equal to it
        one = es(_tensor(x, dtype, device), float(t[0]))
        shared = law_scales(dist, x, proc.alpha(t[0]), proc.sigma(t[0]))["score"]
        assert_scaled_close(one, es(x, np.full(n, t[0])), shared, RTOL[dtype], "shared t")


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=20)
@given(dist=st.one_of(gaussian_mixtures(d=st.integers(1, 3)), empirical_targets(d=st.integers(1, 3))),
       proc=processes(), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_autograd_of_exact_laws_equals_their_closed_forms(device, dist, proc, seed, data):
    # autograd differentiates the torch formulas; the closed forms they must equal come from NumPy (float64).
    # Same scales and tolerance as the values: autograd of a formula has the round-off of its operands
    n = 6
    t = np.array(data.draw(st.lists(times(proc), min_size=n, max_size=n)))
    rng = np.random.default_rng(seed)
    x = _points(dist, n, rng, proc.alpha(t), proc.sigma(t))
    c = proc.at(t)
    scales = law_scales(dist, x, c.alpha, c.sigma, c.dalpha, c.dsigma)
    es = smc.exact_score(dist, proc)
    xl, tl = _tensor(x, torch.float64, device, grad=True), _tensor(t, torch.float64, device, grad=True)
    s = es(xl, tl)
    # d/dx log p_t = s and, for a target with a density, d/dx log p0 = score
    (g,) = torch.autograd.grad(es.logpdf(xl, tl).sum(), xl)
    assert_scaled_close(g, es(x, t), scales["score"], 1e-12, "grad logpdf_t")
    if isinstance(dist, smc.GaussianMixture):
        x0 = _tensor(smc.sample(dist, n, rng), torch.float64, device, grad=True)
        (g0,) = torch.autograd.grad(smc.logpdf(dist, x0).sum(), x0)
        x0n = x0.detach().cpu().numpy()
        assert_scaled_close(g0, smc.score(dist, x0n), law_scales(dist, x0n)["score"], 1e-12, "grad logpdf_0")
    # rows of the Jacobian by autograd = the closed-form Hessian; d/dt at fixed x = the closed-form dt
    J = torch.stack([torch.autograd.grad(s[:, i].sum(), xl, retain_graph=True)[0] for i in range(dist.dim)], 1)
    assert_scaled_close(J, es.hessian(x, t), scales["hessian"], 1e-12, "autograd Jacobian")
    dt = torch.stack([torch.autograd.grad(s[:, i].sum(), tl, retain_graph=True)[0] for i in range(dist.dim)], 1)
    assert_scaled_close(dt, es.dt(x, t), scales["dt"], 1e-12, "autograd d/dt")
    (gd,) = torch.autograd.grad(es.divergence(xl, tl).sum(), xl)
    assert_scaled_close(gd, es.grad_divergence(x, t), scales["grad_divergence"], 1e-12, "autograd grad div")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [None, torch.float64, torch.float32])
@pytest.mark.parametrize("cov", ["iso", "diag", "full", "empirical"])
def test_sample_with_a_torch_generator(cov, dtype, device):
    rng = np.random.default_rng(7)
    d, n = 3, 20000
    means = rng.normal(0, 2, (2, d))
    if cov == "empirical":
        dist = smc.Empirical(rng.normal(0, 2, (5, d)))
    else:
        A = rng.normal(size=(2, d, d))
        covs = {"iso": np.array([0.5, 2.0]), "diag": rng.uniform(0.2, 2.0, (2, d)),
                "full": A @ np.swapaxes(A, -1, -2) / d + 0.1 * np.eye(d)}[cov]
        dist = smc.GaussianMixture([0.3, 0.7], means, covs)
    gen = lambda: torch.Generator(device=device).manual_seed(3)  # noqa: E731
    x = smc.sample(dist, n, gen(), dtype=dtype)
    assert isinstance(x, torch.Tensor) and x.shape == (n, d) and x.device.type == device
    assert x.dtype == (torch.get_default_dtype() if dtype is None else dtype)
    assert torch.equal(x, smc.sample(dist, n, gen(), dtype=dtype))  # the generator is the only randomness
    assert smc.sample(dist, 1, gen(), dtype=dtype).shape == (1, d)
    # first and second moments within 6 standard errors (estimated from the draws: the mixture is not
    # Gaussian); a wrong factor of a full covariance moves the second moments by far more
    z = x.detach().cpu().double().numpy()
    mean, cov_true = dist.mean(), dist.cov()
    se_mean = z.std(0) / np.sqrt(n)
    assert np.all(np.abs(z.mean(0) - mean) <= 6 * se_mean)
    c = z - mean
    prods = c[:, :, None] * c[:, None, :]
    se_cov = prods.std(0) / np.sqrt(n)
    assert np.all(np.abs(prods.mean(0) - cov_true) <= 6 * se_cov + 1e-12)


# -- strict validation on torch; no NumPy round trip --------------------------------------------------------


def _fixed(device, dtype=torch.float64):
    rng = np.random.default_rng(11)
    dist = smc.GaussianMixture([0.4, 0.6], rng.normal(size=(2, 2)), [0.5, 1.5])
    b = Draw(dist, smc.VP(), rng.uniform(0.1, 0.9, 5), smc.sample(dist, 5, rng), rng.normal(size=(5, 2)),
             rng.normal(size=(2, 5, 2)), {"shared": smc.sample(dist, 3, rng),
                                          "rows": smc.sample(dist, 15, rng).reshape(5, 3, 2)}, mlp_params(2, 11))
    T = lambda a: torch.as_tensor(a, dtype=dtype, device=device)  # noqa: E731
    return b, T, TorchMLP(b.params, dtype, device)


def _with(a, index, value):
    a = a.clone()
    a[index] = value
    return a


@pytest.mark.parametrize("device", DEVICES)
def test_bad_torch_inputs_raise_naming_the_argument(device):
    b, T, model = _fixed(device)
    x0, eps, t = T(b.x0), T(b.eps), T(b.t)
    loss = lambda obj=smc.DSM(), **kw: smc.loss(obj, model, b.dist, b.proc, kw.pop("t", t), kw.pop("x0", x0),  # noqa
                                                kw.pop("eps", eps), **kw)
    bad = [
        (dict(x0=_with(x0, (1, 0), float("nan"))), "x0 must be finite"),
        (dict(x0=_with(x0, (2, 1), float("inf"))), "x0 must be finite"),
        (dict(eps=_with(eps, (0, 0), float("-inf"))), "eps must be finite"),
        (dict(t=_with(t, 3, float("nan"))), "t must be finite"),
        (dict(eps=eps[:4]), "eps must have the shape of x0"),
        (dict(x0=x0[:, :1], eps=eps[:, :1]), "x0 must have trailing dimension d=2"),
        (dict(x0=x0[0], eps=eps[0]), "x0 must have 2 dimension"),
        (dict(t=_with(t, 2, 1.5)), "outside the domain"),
        (dict(t=_with(t, 0, -0.1)), "outside the domain"),
        (dict(t=t[:3]), "t must be a scalar or have shape"),
        (dict(obj=smc.STFLoss(4), ref=T(b.ref["shared"][:2])), "ref must have shape"),
        (dict(obj=smc.STFLoss(4), ref=_with(T(b.ref["rows"]), (0, 1, 1), float("nan"))), "ref must be finite"),
        (dict(obj=smc.SSM(divergence=smc.Hutchinson(probes=T(b.probes)[:, :3]))), "probes must have shape"),
        (dict(obj=smc.SSM(divergence=smc.Hutchinson(probes=_with(T(b.probes), (1, 1, 1), float("nan"))))),
         "probes must be finite"),
    ]
    for kw, match in bad:
        with pytest.raises(ValueError, match=match):
            loss(**kw)
    es = smc.exact_score(b.dist, b.proc)
    with pytest.raises(ValueError, match="x must be finite"):
        es(_with(x0, (0, 0), float("nan")), t)
    with pytest.raises(ValueError, match="outside the domain"):
        es(x0, _with(t, 0, 2.0))
    with pytest.raises(ValueError, match="does not broadcast"):
        es(x0, t[:2])
    with pytest.raises(ValueError, match="x must have trailing dimension d=2"):
        smc.score(b.dist, x0[:, :1])
    with pytest.raises(ValueError, match="x must be finite"):
        smc.logpdf(b.dist, _with(x0, (4, 1), float("inf")))
    with pytest.raises(ValueError, match="outside the domain"):
        smc.fpe_residual(model, b.proc, x0, _with(t, 1, -1.0), derivatives=smc.Autograd())


@pytest.mark.parametrize("device", DEVICES)
def test_the_torch_path_never_converts_to_numpy(device, monkeypatch):
    # a CUDA tensor cannot become a NumPy array; on the CPU, forbid the conversion to prove it never happens
    # (inputs going the other way, NumPy constants to tensors, are fine). Sampling is not covered: grouping
    # full-covariance draws by component moves the component indices to the host on purpose.
    b, T, model = _fixed(device)
    empirical = smc.Empirical(b.ref["rows"].reshape(-1, 2))

    def refuse(self, *args, **kwargs):
        raise AssertionError("a torch tensor was converted to NumPy")

    monkeypatch.setattr(torch.Tensor, "__array__", refuse)
    monkeypatch.setattr(torch.Tensor, "numpy", refuse)
    with pytest.raises(AssertionError, match="converted"):
        np.asarray(T(b.x0))
    for case in CASES:
        model.zero_grad()
        torch_loss(case, b, torch.float64, device, model).mean().backward()
    for dist in (b.dist, empirical):
        es = smc.exact_score(dist, b.proc)
        for name in EXACT_METHODS:
            getattr(es, name)(T(b.x0), T(b.t))
        m = smc.marginal(dist, b.proc, 0.5)
        for verb in (smc.logpdf, smc.score, smc.hessian, smc.divergence):
            verb(m, T(b.x0))
    for obj in (smc.SSM(divergence=smc.CentralDifference()), smc.SSM(divergence=smc.Hutchinson(1)),
                smc.FPRegularized(alpha=ALPHA_FP, beta=BETA_FP, derivatives=smc.CentralDifference()),
                smc.FPRegularized(alpha=ALPHA_FP, beta=BETA_FP, derivatives=smc.Hutchinson(1)),
                smc.STFLoss(4)):
        smc.loss(obj, model, b.dist, b.proc, T(b.t), T(b.x0), T(b.eps),
                 rng=torch.Generator(device=device).manual_seed(0)).mean().backward()
    test_bad_torch_inputs_raise_naming_the_argument(device)  # the error paths too


def test_import_scoremc_does_not_import_torch():
    code = "import sys, scoremc; assert 'torch' not in sys.modules, 'import scoremc imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True)
