"""The STF target in the torch layer (scoremc.nn.stf_target, the shared streamed function) and the
STF loss on tensors: float32 accuracy against an independent float64 reference at every sigma,
autograd against finite differences, STF Algorithm 1's shared batch against the per-row form, no
conversion to NumPy, and speed against the official broadcast formulation."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_stf_target import GRID, TOL32, TOL64, case, rel_error, with_x0

import scoremc as smc
from scoremc.nn import stf_target

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


def tensors(values, device="cpu", dtype=None):
    return [torch.as_tensor(v, device=device, dtype=dtype) for v in values]


def test_the_torch_layer_uses_the_shared_function():
    assert stf_target is smc.stf_target


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("sigma,d,kind", GRID)
def test_float32_tensors_match_a_float64_reference(sigma, d, kind, device):
    xt, s, ref, a, x0 = case(sigma, d, kind, np.float32)
    T = tensors((xt, s, ref, a, x0), device)
    got = stf_target(*T[:4])
    assert got.dtype == torch.float32 and got.device == T[0].device
    assert rel_error(got.cpu().numpy(), xt, s, ref, a).max() <= TOL32
    rows = T[2].expand(len(xt), *ref.shape)
    assert rel_error(stf_target(T[0], T[1], rows, T[3]).cpu().numpy(), xt, s, ref, a).max() <= TOL32
    got = stf_target(*T[:4], x0=T[4]).cpu().numpy()
    assert rel_error(got, xt, s, with_x0(x0, ref), a).max() <= TOL32
    # Python-scalar coefficients are rounded to the tensors' dtype, like the formula in that dtype
    got = stf_target(T[0], float(s[0, 0]), T[2]).cpu().numpy()
    assert rel_error(got, xt, s, ref, np.ones_like(a)).max() <= TOL32


@pytest.mark.parametrize("device", DEVICES)
def test_tensors_set_dtype_and_device_and_bad_tensors_are_refused(device):
    rng = np.random.default_rng(2)
    xt, ref = torch.tensor(rng.normal(size=(4, 3)), dtype=torch.float32, device=device), rng.normal(size=(6, 3))
    # NumPy inputs mixed with tensors take the tensors' dtype and device (scoremc._array's rule)
    got = stf_target(xt, np.full((4, 1), 0.5), ref, np.float64(0.9))
    assert got.dtype == torch.float32 and got.device == xt.device
    R = torch.tensor(ref, device=device)
    with pytest.raises(ValueError, match="sigma must be positive"):
        stf_target(xt, torch.zeros(4, 1, device=device), R)
    with pytest.raises(ValueError, match="ref must be finite; found nan at index \\(2, 1\\)"):
        stf_target(xt, 0.5, torch.where(torch.arange(18, device=device).reshape(6, 3) == 7, torch.nan, R))
    with pytest.raises(ValueError, match="x0 must be finite"):
        stf_target(xt, 0.5, R, x0=torch.full_like(xt, torch.inf))


@pytest.mark.parametrize("sigma,d,kind", [g for g in GRID if g[1] < 3072])
def test_float64_tensors_match_the_reference_to_1e_12(sigma, d, kind):
    xt, s, ref, a, _ = case(sigma, d, kind, np.float64)
    got = stf_target(*tensors((xt, s, ref, a)))
    assert got.dtype == torch.float64
    assert rel_error(got.numpy(), xt, s, ref, a).max() <= TOL64


# ---------------------------------------------------------------------------------------------- autograd
def _grad_problem(sigma, form):
    """float64 leaves (xt, ref, sigma, alpha, x0) of 3 rows, d = 2: at sigma = 0.3 every row takes the exact
    differences, at 1.5 the float64 GEMM logits (checked below)."""
    rng = np.random.default_rng(7)
    B, n, d = 3, 5, 2
    ref = rng.uniform(-1, 1, (B, n, d) if form == "rows" else (n, d))
    xt, x0 = rng.uniform(-1, 1, (B, d)), rng.uniform(-1, 1, (B, d))
    s = np.full((B, 1), sigma) * np.array([[1.0], [0.8], [1.2]])
    a = np.array([[1.0], [0.9], [0.7]])
    return [torch.tensor(v, requires_grad=True) for v in (xt, ref, s, a, x0)]


def _f(form):
    return lambda xt, ref, s, a, x0: stf_target(xt, s, ref, a, x0=x0 if form == "x0" else None)


@pytest.mark.parametrize("sigma", [0.3, 1.5])
@pytest.mark.parametrize("form", ["shared", "rows", "x0"])
def test_gradients_equal_finite_differences(sigma, form):
    # w.r.t. x_t, the reference batch, sigma, alpha and x0
    assert torch.autograd.gradcheck(_f(form), _grad_problem(sigma, form), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_the_gradient_check_covers_both_paths(monkeypatch):
    import sys

    STF = sys.modules["scoremc.stf_target"]
    seen = []
    monkeypatch.setattr(STF, "_exact", lambda p, rows, *a, f=STF._exact: seen.append("exact") or f(p, rows, *a))
    monkeypatch.setattr(STF, "_from_gemm_logits",
                        lambda p, rows, *a, f=STF._from_gemm_logits: seen.append("gemm") or f(p, rows, *a))
    for sigma in (0.3, 1.5):
        for form in ("shared", "rows", "x0"):
            seen.clear()
            _f(form)(*_grad_problem(sigma, form))
            assert seen == (["exact"] if sigma < 1 else ["gemm"]), (sigma, form, seen)


# ---------------------------------------------------------------------------------------------- STF loss
def _as_tensor(v, dtype):
    return torch.as_tensor(np.asarray(v), dtype=dtype)


def test_stf_loss_algorithm_1_form_equals_the_per_row_form_on_tensors():
    from test_stf_target import _loss_forms

    alg1, rows = _loss_forms(_as_tensor, torch.float32, offset=3)
    assert alg1.dtype == torch.float32
    scale = rows.abs().max()
    assert float((alg1 - rows).abs().max()) <= 1e-5 * float(scale)
    # and both equal the NumPy float64 loss
    ref64, _ = _loss_forms(lambda v, dtype: np.asarray(v, dtype=dtype), np.float64, offset=3)
    np.testing.assert_allclose(alg1.numpy(), ref64, rtol=0, atol=1e-5 * float(scale))


def test_stf_loss_on_a_shared_batch_trains_a_model(monkeypatch):
    # STF Algorithm 1 with a network: gradients reach the parameters; no tensor is converted to NumPy
    def refuse(self, *args, **kwargs):
        raise AssertionError("a torch tensor was converted to NumPy")

    gen = torch.Generator().manual_seed(0)
    batch = torch.rand(64, 8, generator=gen) * 2 - 1
    x0, eps = batch[16:32], torch.randn(16, 8, generator=gen)  # e.g. the second shard's minibatch
    t = torch.rand(16, generator=gen) * 0.9 + 0.05
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8))
    model = lambda x, tt: net(x)
    monkeypatch.setattr(torch.Tensor, "__array__", refuse)
    monkeypatch.setattr(torch.Tensor, "numpy", refuse)
    loss = smc.loss(smc.STFLoss(64), model, None, smc.VP(), t, x0, eps, ref=batch)
    loss.mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    with pytest.raises(ValueError, match="as a block of consecutive rows"):
        smc.loss(smc.STFLoss(64), model, None, smc.VP(), t, x0.flip(0), eps, ref=batch)
