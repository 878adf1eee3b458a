"""scoremc.nn.models: the sinusoidal embedding and the MLP against their definitions, and a
``Preconditioned`` network under every objective of ``smc.loss`` against a NumPy twin.

The twin is the composition s(x, t) = A(t) x + B(t) F(C(t) x, N(t)) with F the NumPy tanh network of
tests/test_torch.py (with hand-derived derivatives), and A, B, C, N derived here by hand from the EDM and
TSM preconditionings (S = sigma^2 + alpha^2 sigma_d^2):

* EDM (Karras et al. 2022, alpha-scaled): s = (alpha D - x) / sigma^2 with D = c_skip x + c_out F, so
  A = (alpha c_skip - 1) / sigma^2 = -1 / S, B = alpha c_out / sigma^2 = alpha sigma_d / (sigma sqrt(S));
* TSM (App. D, FLAG-T2): s = c_skip x + c_out F, so A = -1 / S, B = -sigma / (alpha sigma_d sqrt(S));

and C = 1 / sqrt(S), N = ln(sigma / alpha) / 4 for both. Its derivatives follow by the chain rule with the
processes' exact alpha', sigma'.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

import scoremc as smc  # noqa: E402
from scoremc.nn import Preconditioned, ScoreMLP, SinusoidalEmbedding  # noqa: E402
from scoremc.testing import processes, times  # noqa: E402
from test_torch import (ALPHA_FP, CASES, DEVICES, DTYPES, RTOL, TorchMLP, TwinMLP, _norm, _targets,  # noqa: E402
                        assert_scaled_close, draws, fpe_parts, loss_scale, mlp_params, numpy_loss, torch_loss)

SIGMA_DATA = 0.7


def _coefficients(proc, t, kind, sd=SIGMA_DATA):
    """(A, B, C, N) and their t-derivatives at times t (N,), each (N,)."""
    a, s = np.asarray(proc.alpha(t)), np.asarray(proc.sigma(t))
    da, ds = np.asarray(proc.dalpha(t)), np.asarray(proc.dsigma(t))
    S = s * s + a * a * sd * sd
    dS = 2 * s * ds + 2 * a * da * sd * sd
    A, dA = -1.0 / S, dS / S**2
    C, dC = 1.0 / np.sqrt(S), -0.5 * dS / S**1.5
    N, dN = 0.25 * np.log(s / a), 0.25 * (ds / s - da / a)
    if kind == "edm":
        B = a * sd / (s * np.sqrt(S))
        dB = sd * (da / (s * np.sqrt(S)) - a * ds / (s * s * np.sqrt(S)) - 0.5 * a * dS / (s * S**1.5))
    else:
        B = -s / (a * sd * np.sqrt(S))
        dB = -(ds / (a * np.sqrt(S)) - s * da / (a * a * np.sqrt(S)) - 0.5 * s * dS / (a * S**1.5)) / sd
    return (A, B, C, N), (dA, dB, dC, dN)


class PrecondTwin(smc.AnalyticScore):
    """NumPy twin of ``Preconditioned(TorchMLP(params), proc, kind, sigma_data=SIGMA_DATA)``."""

    def __init__(self, params, proc, kind):
        self.F, self.proc, self.kind = TwinMLP(params), proc, kind

    def _parts(self, x, t):
        x = np.asarray(x, np.float64)
        t = np.broadcast_to(np.asarray(t, np.float64), x.shape[:-1]).reshape(-1)
        (A, B, C, N), d = _coefficients(self.proc, t, self.kind)
        col = lambda v: v.reshape(x.shape[:-1] + (1,))  # noqa: E731
        y, n = col(C) * x, N.reshape(x.shape[:-1])
        return x, (col(A), col(B), col(C), n), tuple(col(v) for v in d), y

    def __call__(self, x, t):
        x, (A, B, C, n), _, y = self._parts(x, t)
        return A * x + B * self.F(y, n)

    def hessian(self, x, t):
        x, (A, B, C, n), _, y = self._parts(x, t)
        eye = np.eye(x.shape[-1])
        return A[..., None] * eye + (B * C)[..., None] * self.F.hessian(y, n)

    def divergence(self, x, t):
        x, (A, B, C, n), _, y = self._parts(x, t)
        return A[..., 0] * x.shape[-1] + (B * C)[..., 0] * self.F.divergence(y, n)

    def grad_divergence(self, x, t):
        x, (A, B, C, n), _, y = self._parts(x, t)
        return B * C * C * self.F.grad_divergence(y, n)

    def dt(self, x, t):
        x, (A, B, C, n), (dA, dB, dC, dN), y = self._parts(x, t)
        Jx = np.einsum("...ij,...j->...i", self.F.hessian(y, n), x)
        return dA * x + dB * self.F(y, n) + B * (dC * Jx + dN * self.F.dt(y, n))


def _cancellation(proc, t, kind, sd=SIGMA_DATA):
    """Operand size c(t) of the model's own subtraction, per unit |x|: the EDM route s = (alpha D - x) / sigma^2
    subtracts alpha c_skip x from x (c = (alpha^2 sd^2 / S + 1) / sigma^2, while the result's x-part is only
    -x / S); the TSM route adds c_skip x = -x / S directly (c = 1 / S)."""
    a, s = np.asarray(proc.alpha(t)), np.asarray(proc.sigma(t))
    S = s * s + a * a * sd * sd
    return (a * a * sd * sd / S + 1) / s**2 if kind == "edm" else 1.0 / S


def model_scale(case, b, loss64, twin):
    """Round-off of the preconditioned model's own evaluation, propagated through the loss (added to
    :func:`test_torch.loss_scale`, which knows only the loss formula's): delta s / u ~ c |x_t|, delta J / u ~
    c sqrt(d), delta(d/dt s) / u ~ |c'| |x_t| (c from :func:`_cancellation`, c' by a central difference of
    that hand formula). A regression loss lam |s - L|^2 moves by 2 sqrt(lam loss) delta s; SSM-type losses by
    |s| delta s + d delta J; the FP residual by its operands' errors, times ALPHA m |eps|^(m-1) / d^m."""
    al, sg = np.asarray(b.proc.alpha(b.t)), np.asarray(b.proc.sigma(b.t))
    xt = al[:, None] * b.x0 + sg[:, None] * b.eps
    d, xn = xt.shape[1], _norm(xt)
    c = _cancellation(b.proc, b.t, twin.kind)
    h = 1e-6 * np.maximum(b.t, 1e-3)
    lo = np.maximum(b.t - h, b.proc.t_min)
    dc = np.abs(_cancellation(b.proc, b.t + h, twin.kind) - _cancellation(b.proc, lo, twin.kind)) / (b.t + h - lo)
    ds, dJ, ddt = c * xn, c * np.sqrt(d), dc * xn
    lam = 1.0 if case.weighting is None else np.asarray(case.weighting.score_space(b.proc, b.t))
    sn = _norm(twin(xt, b.t))
    K = 2 * np.sqrt(lam * np.abs(loss64)) * ds + sn * ds + d * dJ
    if case.kind == "fp":
        g2, f = np.asarray(b.proc.g2(b.t)), np.abs(np.asarray(b.proc.drift_coef(b.t)))
        _, J, _, _, res = fpe_parts(twin, b.proc, xt, b.t)
        Jn = np.sqrt(np.sum(J * J, axis=(-2, -1)))
        res_err = ddt + 0.5 * g2 * d * dJ + g2 * (Jn * ds + dJ * sn) + f * (ds + dJ * xn)
        K = K + ALPHA_FP * case.m * _norm(res) ** (case.m - 1) / d**case.m * res_err
    return K


def _model(params, proc, kind, dtype=torch.float64, device="cpu"):
    return Preconditioned(TorchMLP(params, dtype, device), proc, kind, sigma_data=SIGMA_DATA)


@pytest.mark.parametrize("kind", ["edm", "tsm"])
@settings(max_examples=15)
@given(d=st.integers(1, 3), proc=processes(), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_preconditioned_twin_and_module_agree_and_twin_derivatives_are_right(kind, d, proc, seed, data):
    rng = np.random.default_rng(seed)
    params = mlp_params(d, seed)
    twin = PrecondTwin(params, proc, kind)
    t = np.array([data.draw(times(proc)) for _ in range(5)])
    x = rng.normal(0, 2, (5, d))
    out = _model(params, proc, kind)(torch.tensor(x), torch.tensor(t)).detach().numpy()
    np.testing.assert_allclose(out, twin(x, t), rtol=1e-12, atol=1e-12 * np.abs(twin(x, t)).max())
    # the twin's hand derivatives against central differences (step relative to the scales of x and t)
    h = 1e-6 * (1 + np.abs(x).max())
    J = np.stack([(twin(x + h * e, t) - twin(x - h * e, t)) / (2 * h) for e in np.eye(d)], -1)
    H = twin.hessian(x, t)
    np.testing.assert_allclose(H, J, rtol=1e-5, atol=1e-5 * np.abs(H).max())
    np.testing.assert_allclose(twin.divergence(x, t), np.trace(H, axis1=-2, axis2=-1), rtol=1e-12,
                               atol=1e-12 * np.abs(H).max())
    gd = np.stack([(twin.divergence(x + h * e, t) - twin.divergence(x - h * e, t)) / (2 * h) for e in np.eye(d)], -1)
    np.testing.assert_allclose(twin.grad_divergence(x, t), gd, rtol=1e-4,
                               atol=1e-5 * (np.abs(gd).max() + np.abs(H).max()))
    ht = 1e-6 * np.maximum(t, 1e-3)
    lo, hi = np.maximum(t - ht, proc.t_min), t + ht
    fd = (twin(x, hi) - twin(x, lo)) / (hi - lo)[:, None]
    np.testing.assert_allclose(twin.dt(x, t), fd, rtol=1e-4, atol=1e-5 * (np.abs(fd).max() + 1))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["edm", "tsm"])
@pytest.mark.parametrize("case", CASES, ids=repr)
def test_every_loss_of_a_preconditioned_module_equals_numpy(case, kind, device):
    # the per-sample loss of every objective through smc.loss, Preconditioned on torch vs its NumPy twin:
    # float64 <= 1e-12 and float32 <= 1e-5 of the per-row round-off scale of tests/test_torch.py plus the
    # model's own (model_scale)
    @settings(max_examples=10)
    @given(b=draws(_targets(case)))
    def check(b):
        for dtype in DTYPES:
            bd = b.rounded(dtype)
            twin = PrecondTwin(bd.params, bd.proc, kind)
            expected = numpy_loss(case, bd, twin=twin)
            model = _model(bd.params, bd.proc, kind, dtype, device)
            out = torch_loss(case, bd, dtype, device, model)
            assert out.shape == (len(bd.t),) and out.dtype == dtype and out.requires_grad
            scale = loss_scale(case, bd, expected, twin) + model_scale(case, bd, expected, twin)
            assert_scaled_close(out, expected, scale, RTOL[dtype], f"{case.id} {kind} {dtype}")

    check()


def test_sinusoidal_embedding_is_its_definition():
    emb = SinusoidalEmbedding(8, max_freq=100.0)
    c = torch.tensor([0.0, 0.3, -2.0], dtype=torch.float64)
    w = 100.0 ** (-np.arange(4) / 4)
    expected = np.concatenate([np.cos(c.numpy()[:, None] * w), np.sin(c.numpy()[:, None] * w)], 1)
    np.testing.assert_allclose(emb(c).numpy(), expected, rtol=1e-15, atol=1e-15)
    assert emb(c.float()).dtype == torch.float32 and emb(c[:, None]).shape == (3, 8)
    for bad in (7, 0, 2.0, True):
        with pytest.raises(ValueError, match="dim"):
            SinusoidalEmbedding(bad)


def test_score_mlp_is_the_tsm_network():
    net = ScoreMLP(5)
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    # TSM §4.2: 3 hidden layers of 128, embedding 128; input [x, embedding]
    assert [(m.in_features, m.out_features) for m in linears] == [(133, 128), (128, 128), (128, 128), (128, 5)]
    assert sum(isinstance(m, torch.nn.SiLU) for m in net.modules()) == 3
    x = torch.randn(4, 5)
    assert torch.equal(net(x, torch.zeros(4)), torch.zeros(4, 5))  # the head starts at zero
    with pytest.raises(ValueError, match=r"x must have shape \(N, 5\)"):
        net(torch.randn(4, 3), torch.zeros(4))
    for bad, error in (dict(dim=0), ValueError), (dict(dim=2, hidden=0), ValueError), (dict(dim=2, depth=True), TypeError):
        with pytest.raises(error, match=next(iter(bad)) if "dim" in bad and len(bad) == 1 else list(bad)[-1]):
            ScoreMLP(**bad)


@pytest.mark.parametrize("kind", ["edm", "tsm"])
@pytest.mark.parametrize("proc", [smc.VE(), smc.VP(), smc.Cosine(), smc.EDM()], ids=lambda p: type(p).__name__)
def test_an_untrained_preconditioned_model_is_the_gaussian_score(kind, proc):
    # F = 0 leaves the c_skip part: the exact score of N(0, sigma_data^2 I) under the process, -x / S
    # (Karras et al. 2022 App. B.6: c_skip is optimal for that target), computed here by the exact layer
    model = Preconditioned(ScoreMLP(3), proc, kind, sigma_data=SIGMA_DATA).double()
    gauss = smc.GaussianMixture([1.0], [[0.0, 0.0, 0.0]], [SIGMA_DATA**2])
    rng = np.random.default_rng(0)
    x, t = rng.normal(0, 2, (6, 3)), np.linspace(0.1, 0.9, 6)
    expected = smc.exact_score(gauss, proc)(x, t)
    np.testing.assert_allclose(model(torch.tensor(x), torch.tensor(t)).detach().numpy(), expected, rtol=1e-13)


@pytest.mark.parametrize("output", ["score", "denoiser", "eps"])
def test_unpreconditioned_outputs_convert_to_the_score(output):
    class Identity(torch.nn.Module):
        def forward(self, x, c):
            return x

    proc = smc.VP()
    model = Preconditioned(Identity(), proc, None, output=output).double()
    x, t = torch.randn(4, 2, dtype=torch.float64), torch.linspace(0.2, 0.8, 4, dtype=torch.float64)
    a, s = proc.alpha(t.numpy())[:, None], proc.sigma(t.numpy())[:, None]
    # the network predicts x itself: as a score s = x; as a denoiser s = (alpha x - x) / sigma^2 (Tweedie);
    # as eps s = -x / sigma (grad log N(x_t; alpha x0, sigma^2 I) = -eps / sigma)
    expected = {"score": x.numpy(), "denoiser": (a * x.numpy() - x.numpy()) / s**2, "eps": -x.numpy() / s}[output]
    np.testing.assert_allclose(model(x, t).numpy(), expected, rtol=1e-14)


def test_preconditioned_validates_its_arguments():
    net = ScoreMLP(2)
    with pytest.raises(ValueError, match="precond"):
        Preconditioned(net, smc.VE(), "karras")
    with pytest.raises(ValueError, match="output"):
        Preconditioned(net, smc.VE(), None, output="velocity")
    with pytest.raises(ValueError, match="contradicts"):
        Preconditioned(net, smc.VE(), "edm", output="score")
    with pytest.raises(ValueError, match="sigma_data"):
        Preconditioned(net, smc.VE(), "edm", sigma_data=0.0)
    with pytest.raises(TypeError, match="net"):
        Preconditioned("net", smc.VE())
    with pytest.raises(TypeError):
        Preconditioned(net, "ve")
    with pytest.raises(ValueError, match="outside the domain"):
        Preconditioned(net, smc.VE())(torch.zeros(2, 2), torch.tensor([0.5, 1.5]))


def test_scoremc_testing_accepts_a_preconditioned_module():
    # float32 module, called by the assertions with tensors of its dtype: the untrained EDM model is the exact
    # score of N(0, sigma_data^2 I) (see above), so it passes against that target and fails against another;
    # it is conservative (J = -I / S), and a network with a random head is not
    from scoremc.testing import assert_conservative, assert_score_close

    proc = smc.VP()
    gauss = smc.GaussianMixture([1.0], [[0.0, 0.0]], [SIGMA_DATA**2])
    torch.manual_seed(0)
    model = Preconditioned(ScoreMLP(2), proc, "edm", sigma_data=SIGMA_DATA)
    assert_score_close(model, gauss, proc, rtol=1e-5)
    with pytest.raises(AssertionError):
        assert_score_close(model, smc.builtin.ring8(), proc, rtol=0.05)
    assert_conservative(model, proc, gauss, rtol=1e-3)
    torch.nn.init.normal_(model.net.head.weight, std=1.0)
    with pytest.raises(AssertionError):
        assert_conservative(model, proc, gauss, rtol=1e-3)
