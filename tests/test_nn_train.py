"""scoremc.nn.train: training reaches the exact score, every objective trains, the time samplers are unbiased
for their objectives, checkpoints resume bit for bit after a SIGKILL, runs are deterministic.

Independent expectations used here:

* For the fixed model s(x, t) = -x and DSM, with x_t = alpha x0 + sigma eps, the regression target is
  L = (alpha x0 - x_t) / sigma^2 = -eps / sigma, so s - L = -alpha x0 + (1/sigma - sigma) eps and, eps being
  independent of x0 with mean 0,  E||s - L||^2 = alpha^2 E||x0||^2 + d (1/sigma - sigma)^2  for any target
  (E||x0||^2 = sum_k w_k (||mu_k||^2 + tr C_k)). The objectives are then one-dimensional integrals, computed
  here by scipy quadrature: J = (1/T) int lambda(t) E(t) dt for uniform and importance-sampled times,
  J = int phi_trunc(u) lambda E du over u = ln(sigma / alpha) for log-normal noise levels.
* The importance proposal for lambda = sigma^2 under VE has the closed-form CDF
  (r^(2t) - r^(2 t_lo)) / (r^(2 t_hi) - r^(2 t_lo)), r = sigma_max / sigma_min.

Statistical tests use fixed seeds and 4.5-standard-error bounds (two-sided false-alarm rate 7e-6 each under
the normal approximation) or Kolmogorov-Smirnov p-values >= 1e-3.
"""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from scipy import integrate, stats

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

import scoremc as smc  # noqa: E402
from scoremc import builtin  # noqa: E402
from scoremc.nn import Preconditioned, ScoreMLP  # noqa: E402
from scoremc.nn.data import (ExactTarget, FiniteData, ImportanceTimes, LogNormalSigmas, UniformTimes,  # noqa: E402
                             default_t_range)
from scoremc.nn.train import LossEstimator, TrainConfig, load_checkpoint, relative_score_error, train  # noqa: E402
from scoremc.testing import assert_score_close  # noqa: E402

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]
GM, VE = builtin.fp_gmm(), smc.VE()
EVAL_TIMES = tuple(np.linspace(0.05, 1.0, 12))
SMALL = dict(hidden=16, depth=2, embedding=8)


def make_model(proc=VE, dist=GM, seed=0, precond="edm", **size):
    """The model, with initial weights from ``seed`` (without touching torch's global RNG)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Preconditioned(ScoreMLP(dist.dim, **(size or {})), proc, precond, sigma_data=dist.sigma_data)


def weights(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# -- the 60-second DSM recipe ------------------------------------------------------------------------------------
DSM_RECIPE = dict(steps=8000, batch_size=512, lr=1e-3, ema=0.999, weighting=smc.DSMOptimal(GM.sigma_data),
                  eval_times=EVAL_TIMES, eval_every=0, eval_points=2048)


@pytest.fixture(scope="module")
def dsm_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dsm") / "run"
    threads = torch.get_num_threads()
    # one thread: as fast as two for this small network, and it degrades gracefully when the cores are shared
    # (two spinning intra-op threads competing with other processes slowed a run 20-fold)
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        result = train(make_model(), smc.DSM(), GM, VE, out=out, progress=False, seed=0, **DSM_RECIPE)
        return result, out, time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)


def test_dsm_reaches_relative_score_error_below_one_tenth(dsm_run):
    result, _, seconds = dsm_run
    err = result.eval["rel_error"].isel(step=-1)
    print(f"\nDSM, {DSM_RECIPE['steps']} steps in {seconds:.1f} s: mean relative score error over t in [0.05, 1] "
          f"= {float(err.mean()):.4f}; by t: {np.round(err.values, 4)}")
    assert float(err.mean()) <= 0.1
    assert np.all(np.isfinite(result.loss)) and len(result.loss) == DSM_RECIPE["steps"]
    # wall time is not asserted (the cores are shared); about 30 s on 2 idle cores, printed above


def test_checkpoint_round_trip(dsm_run):
    result, out, _ = dsm_run
    loaded = load_checkpoint(out)
    for k, v in weights(result.model).items():
        assert torch.equal(loaded.state_dict()[k], v), k
    raw = load_checkpoint(out, ema=False)
    for k, v in weights(result.raw_model).items():
        assert torch.equal(raw.state_dict()[k], v), k
    x, t = torch.randn(64, 2), torch.full((64,), 0.5)
    assert torch.equal(loaded(x, t), result.model(x, t))
    # the loaded model is a score callable the testing toolkit accepts (relative RMS = sqrt of rel_error)
    assert_score_close(loaded, GM, VE, rtol=0.3, ts=[0.5, 0.7, 0.9, 1.0])
    with pytest.raises(AssertionError):  # and not vacuously: the untrained model fails the same check
        assert_score_close(make_model(), GM, VE, rtol=0.3, ts=[0.5, 0.7, 0.9, 1.0])
    # into a module passed in, strictly
    into = load_checkpoint(out, model=make_model(seed=5))
    assert torch.equal(into(x, t), result.model(x, t))
    with pytest.raises(RuntimeError):
        load_checkpoint(out, model=make_model(**SMALL))


def test_run_folder_contents(dsm_run):
    result, out, _ = dsm_run
    latest = json.loads((out / "checkpoint.json").read_text())
    assert latest["step"] == DSM_RECIPE["steps"]
    folder = out / latest["folder"]
    assert sorted(os.listdir(folder)) == ["ema.safetensors", "model.safetensors", "state.pt"]
    state = torch.load(folder / "state.pt", weights_only=True)
    assert state["step"] == DSM_RECIPE["steps"] and len(state["loss"]) == DSM_RECIPE["steps"]
    run = json.loads((out / "config.json").read_text())
    assert run["objective"] == "DSM()" and run["process"]["type"] == "VE" and run["settings"]["seed"] == 0
    import xarray as xr

    with xr.open_dataset(out / "eval.nc") as ds:
        np.testing.assert_array_equal(ds["rel_error"].values, result.eval["rel_error"].values)


# Longer recipes (pytest -m slow): the DSM recipe with the other regressions; thresholds about 4x the mean errors
# measured at seed 0 (TSM 0.0024 over t in [0.05, 0.4], kappa_bar mixture 0.0094 and STF(256) 0.0122 over [0.05, 1]).
# TSM is judged where its target is informative: its variance E|grad log p0|^2 / alpha^2 does not shrink with the
# noise while the score does (TSM Eq. 6), so at large sigma its relative error grows (0.04 at t = 0.5, 7.7 averaged
# over [0.05, 1]).
SLOW_RECIPES = {
    "tsm": (smc.TSM(), "tsm", smc.TSMOptimal(GM.sigma_data), tuple(np.linspace(0.05, 0.4, 5)), 0.01),
    "kappa_bar": (smc.MixSM(smc.KappaBar()), "edm", smc.DSMOptimal(GM.sigma_data), EVAL_TIMES, 0.05),
    "stf": (smc.STFLoss(256), "edm", smc.DSMOptimal(GM.sigma_data), EVAL_TIMES, 0.05),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SLOW_RECIPES))
def test_longer_recipes_reach_the_exact_score(name):
    objective, precond, weighting, ts, threshold = SLOW_RECIPES[name]
    recipe = {**DSM_RECIPE, "weighting": weighting, "eval_times": ts}
    r = train(make_model(precond=precond), objective, GM, VE, progress=False, seed=0, **recipe)
    err = r.eval["rel_error"].isel(step=-1)
    print(f"\n{name}: mean relative score error {float(err.mean()):.4f}; by t: {np.round(err.values, 4)}")
    assert float(err.mean()) <= threshold


# -- every objective trains ----------------------------------------------------------------------------------------
OBJECTIVES = [smc.DSM(), smc.TSM(), smc.MixSM(smc.Kappa()), smc.MixSM(smc.KappaBar()), smc.STFLoss(8), smc.LCSS(),
              smc.SSM(), smc.SSM(divergence=smc.Hutchinson(1, jvp=smc.Autograd())), smc.FDSSM(),
              smc.FPRegularized(alpha=0.01, beta=0.01, m=2, derivatives=smc.Autograd())]


@pytest.mark.parametrize("objective", OBJECTIVES, ids=lambda o: o.name)
def test_every_objective_trains(objective):
    proc = smc.VP()
    model = make_model(proc, **SMALL)
    before = weights(model)
    weighting = None if isinstance(objective, smc.FPRegularized) else smc.DSMOptimal(GM.sigma_data)
    r = train(model, objective, GM, proc, steps=3, batch_size=16, weighting=weighting, eval_times=(0.3, 0.9),
              eval_points=16, progress=False)
    assert r.loss.shape == (3,) and np.all(np.isfinite(r.loss))
    assert any(not torch.equal(before[k], v) for k, v in weights(model).items())
    assert r.eval.sizes == {"step": 1, "t": 2} and np.all(np.isfinite(r.eval["rel_error"].values))


@pytest.mark.parametrize("data", ["tensor", "empirical"])
@pytest.mark.parametrize("order", ["epochs", "replacement"])
def test_finite_data_sets_train(data, order):
    pts = np.random.default_rng(0).normal(size=(40, 2))
    dist = smc.Empirical(pts)
    model = make_model(VE, dist, **SMALL)
    r = train(model, smc.STFLoss(4), torch.as_tensor(pts) if data == "tensor" else dist, VE, steps=3,
              batch_size=8, data_order=order, eval_points=16, eval_times=(0.5,), progress=False)
    assert np.all(np.isfinite(r.loss))
    assert (r.eval is None) == (data == "tensor")  # exact laws only for the Empirical


def test_epochs_visit_every_point_once_per_epoch():
    m, batch, shards = 10, 4, 2
    source = FiniteData(torch.arange(m, dtype=torch.float64)[:, None], "epochs", seed=3, batch_size=batch)
    gen = torch.Generator()
    seen = [source.minibatch(step, s, batch // shards, gen, torch.float64)[:, 0] for step in range(5)
            for s in range(shards)]
    seen = torch.cat(seen).long().tolist()  # positions 0..19: two epochs
    assert sorted(seen[:m]) == list(range(m)) and sorted(seen[m:]) == list(range(m))
    assert seen[:m] != seen[m:]  # a fresh permutation per epoch


# -- time samplers: laws and unbiasedness --------------------------------------------------------------------------
class MinusX(torch.nn.Module):
    """The fixed score s(x, t) = -x (no parameters)."""

    def forward(self, x, t):
        return -x


def _second_moment(gm):
    covs = np.asarray(gm.covs)
    trace = covs * gm.dim if covs.ndim == 1 else covs.sum(-1) if covs.ndim == 2 else np.trace(covs, axis1=1, axis2=2)
    return float(gm.weights @ ((gm.means ** 2).sum(-1) + trace))


def _expected(proc, weighting, t, m2, d):
    a, s = float(proc.alpha(t)), float(proc.sigma(t))
    return float(weighting.score_space(proc, t)) * (a * a * m2 + d * (1.0 / s - s) ** 2)


def _objective(proc, weighting, times, t_range, m2, d):
    lo, hi = t_range
    if isinstance(times, LogNormalSigmas):
        u_lo, u_hi = (np.log(float(proc.sigma(t) / proc.alpha(t))) for t in t_range)
        z = stats.norm.cdf((u_hi - times.p_mean) / times.p_std) - stats.norm.cdf((u_lo - times.p_mean) / times.p_std)

        def f(u):
            t = float(proc.t_from_log_snr(-2.0 * u))
            return stats.norm.pdf(u, times.p_mean, times.p_std) / z * _expected(proc, weighting, t, m2, d)

        return integrate.quad(f, u_lo, u_hi, limit=500, epsrel=1e-10)[0]
    cuts = np.unique(np.concatenate([np.geomspace(lo, hi, 40), np.linspace(lo, hi, 40)]))
    total = sum(integrate.quad(lambda t: _expected(proc, weighting, t, m2, d), a, b, epsrel=1e-11)[0]
                for a, b in zip(cuts[:-1], cuts[1:]))
    return total / (hi - lo)


CASES = [  # (process, weighting, times, t_range)
    (smc.VP(), smc.SigmaSquared(), ImportanceTimes(smc.SigmaSquared()), (0.1, 0.6)),
    (smc.VP(), smc.SigmaSquared(), UniformTimes(), (0.1, 0.6)),
    (smc.VE(), smc.Likelihood(), ImportanceTimes(smc.Likelihood()), (0.2, 0.7)),
    (smc.Cosine(), smc.DSMOptimal(1.0), ImportanceTimes(smc.SigmaSquared()), (0.2, 0.9)),
    (smc.EDM(), smc.EDMWeighting(5.0), LogNormalSigmas(), (0.05, 5.0)),  # truncation removes 7% of the mass
    (smc.VP(), smc.SigmaSquared(), LogNormalSigmas(), (0.05, 0.95)),
]


@pytest.mark.parametrize("proc,weighting,times,t_range", CASES, ids=lambda v: getattr(v, "name", None))
def test_loss_estimates_are_unbiased_for_the_objective(proc, weighting, times, t_range):
    est = LossEstimator(smc.DSM(), ExactTarget(GM), proc, times, t_range, weighting, torch.float64)
    vals = est.estimates(MinusX(), 200_000, torch.Generator().manual_seed(11)).numpy()
    want = _objective(proc, weighting, times, t_range, _second_moment(GM), GM.dim)
    se = vals.std(ddof=1) / np.sqrt(len(vals))
    assert abs(vals.mean() - want) <= 4.5 * se, (vals.mean(), want, se)
    assert se < 0.02 * abs(want)  # the test has power: the bound is a small fraction of the value


def test_importance_times_follow_the_weighting():
    proc, t_range = smc.VE(), (0.1, 0.9)
    times = ImportanceTimes(smc.SigmaSquared())
    t, factor = times.draw(20_000, torch.Generator().manual_seed(2), proc, t_range, torch.float64)
    r2 = (proc.sigma_max / proc.sigma_min) ** 2

    def cdf(x):
        return (r2 ** x - r2 ** t_range[0]) / (r2 ** t_range[1] - r2 ** t_range[0])

    assert stats.kstest(t.numpy(), cdf).pvalue >= 1e-3
    # the factor is 1 / (q T) with q the proposal's density, which integrates to 1 over t_range
    q = times.density(proc, t_range, t.numpy())
    np.testing.assert_allclose(factor.numpy(), 1.0 / (q * 0.8), rtol=1e-12)
    grid = np.linspace(*t_range, 200_001)
    assert integrate.trapezoid(times.density(proc, t_range, grid), grid) == pytest.approx(1.0, abs=1e-4)


def test_lognormal_sigmas_law():
    proc = smc.EDM()
    lo, hi = default_t_range(proc)
    t, factor = LogNormalSigmas().draw(20_000, torch.Generator().manual_seed(4), proc, (lo, hi), torch.float64)
    assert factor is None and float(t.min()) >= lo and float(t.max()) <= hi
    a, b = (np.log(lo) + 1.2) / 1.2, (np.log(hi) + 1.2) / 1.2
    assert stats.kstest(np.log(t.numpy()), stats.truncnorm(a, b, loc=-1.2, scale=1.2).cdf).pvalue >= 1e-3


# -- determinism, resume -----------------------------------------------------------------------------------------
def _tiny_run(seed, **kw):
    model = make_model(**SMALL)
    train(model, smc.STFLoss(4), GM, VE, steps=5, batch_size=16, seed=seed, eval_points=8, eval_times=(0.5,),
          progress=False, times=ImportanceTimes(smc.DSMOptimal(GM.sigma_data)), **kw)
    return weights(model)


def test_same_seed_same_weights_different_seed_different_weights():
    a, b, c = _tiny_run(1), _tiny_run(1), _tiny_run(2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_global_rng_is_neither_used_nor_changed():
    state = torch.get_rng_state()
    a = _tiny_run(1)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(12345)  # a different global state changes nothing
    b = _tiny_run(1)
    torch.set_rng_state(state)
    assert all(torch.equal(a[k], b[k]) for k in a)


RUN_SCRIPT = """
import sys, torch, scoremc as smc
from scoremc import builtin
from scoremc.nn import Preconditioned, ScoreMLP, train
from scoremc.nn.data import ImportanceTimes
torch.set_num_threads(1)
gm, proc = builtin.fp_gmm(), smc.VE()
torch.manual_seed(0)
model = Preconditioned(ScoreMLP(2, hidden=32, depth=2, embedding=16), proc, "edm", sigma_data=gm.sigma_data)
train(model, smc.STFLoss(8), gm, proc, out=sys.argv[1], steps=int(sys.argv[2]), batch_size=32, checkpoint_every=20,
      eval_every=100, eval_points=64, eval_times=(0.3, 0.8), times=ImportanceTimes(smc.DSMOptimal(gm.sigma_data)),
      progress=False)
"""


def _launch(out, steps):
    return subprocess.Popen([sys.executable, "-c", RUN_SCRIPT, str(out), str(steps)], stderr=subprocess.PIPE)


def test_kill_and_resume_is_bit_identical(tmp_path):
    steps = 400
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    reference = _launch(whole, steps)
    victim = _launch(cut, steps)
    deadline = time.monotonic() + 60
    latest = cut / "checkpoint.json"
    # kill after the evaluation at step 100 and a later checkpoint, so that eval.nc is continued too
    while not (latest.exists() and json.loads(latest.read_text())["step"] >= 120):
        assert victim.poll() is None, victim.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    killed_at = json.loads((cut / "checkpoint.json").read_text())["step"]
    assert 0 < killed_at < steps
    resumed = _launch(cut, steps)
    assert resumed.wait() == 0, resumed.stderr.read().decode()
    assert reference.wait() == 0, reference.stderr.read().decode()
    final = f"step-{steps:08d}"
    for name in ("model.safetensors", "ema.safetensors"):
        assert (whole / final / name).read_bytes() == (cut / final / name).read_bytes(), name
    a, b = (torch.load(p / final / "state.pt", weights_only=True) for p in (whole, cut))
    assert torch.equal(a["loss"], b["loss"])
    assert (whole / "eval.nc").exists() and (cut / "eval.nc").exists()
    import xarray as xr

    with xr.open_dataset(whole / "eval.nc") as x, xr.open_dataset(cut / "eval.nc") as y:
        assert list(x["step"].values) == list(range(100, steps + 1, 100))
        np.testing.assert_array_equal(x["rel_error"].values, y["rel_error"].values)
    print(f"\nkilled at committed step {killed_at} of {steps}; resumed run equal byte for byte")


def test_resume_continues_and_checks_the_run(tmp_path):
    kw = dict(steps=4, batch_size=8, eval_points=8, eval_times=(0.5,), progress=False)
    model = make_model(**SMALL)
    train(model, smc.DSM(), GM, VE, out=tmp_path, **kw)
    # leftovers of a killed run (an uncommitted checkpoint, a temporary folder) are ignored and cleaned up
    (tmp_path / "step-99999999").mkdir()
    (tmp_path / ".tmp-step-x").mkdir()
    r = train(model, smc.DSM(), GM, VE, out=tmp_path, **{**kw, "steps": 6})  # resumes at 4, runs 2 more
    assert len(r.loss) == 6 and r.step == 6
    assert sorted(p.name for p in tmp_path.iterdir() if "step" in p.name) == ["step-00000006"]
    with pytest.raises(ValueError, match="settings.lr"):
        train(model, smc.DSM(), GM, VE, out=tmp_path, **{**kw, "steps": 8, "lr": 0.5})
    with pytest.raises(ValueError, match="objective"):
        train(model, smc.LCSS(), GM, VE, out=tmp_path, **{**kw, "steps": 8})
    with pytest.raises(FileExistsError):
        train(model, smc.DSM(), GM, VE, out=tmp_path, resume=False, **kw)
    with pytest.raises(FileNotFoundError):
        train(model, smc.DSM(), GM, VE, out=tmp_path / "new", resume=True, **kw)


def test_package_exports_the_train_function():
    # whichever is imported first, the package's `train` is the function, not the submodule of that name
    code = ("import inspect; import scoremc.nn.train; from scoremc.nn import TrainConfig; "
            "from scoremc.nn import train, load_checkpoint; "
            "assert inspect.isfunction(train) and inspect.isfunction(load_checkpoint), train")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


# -- devices, dtypes, validation -----------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_device_and_dtype(device, dtype):
    model = make_model(**SMALL)
    r = train(model, smc.STFLoss(4), GM, VE, steps=2, batch_size=8, dtype=dtype, device=device, eval_points=8,
              eval_times=(0.5,), progress=False)
    p = next(r.model.parameters())
    assert p.device.type == device and p.dtype == getattr(torch, dtype)


def test_relative_score_error_of_the_exact_score_is_zero_and_of_zero_is_one():
    exact = smc.exact_score(GM, VE)

    class Exact(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

        def forward(self, x, t):
            return exact(x, t)

    class Zero(Exact):
        def forward(self, x, t):
            return torch.zeros_like(x)

    assert np.all(relative_score_error(Exact(), GM, VE, [0.2, 0.9], n=64)["rel_error"].values < 1e-20)
    np.testing.assert_allclose(relative_score_error(Zero(), GM, VE, [0.2, 0.9], n=64)["rel_error"].values, 1.0)


@pytest.mark.parametrize("t", [0.3, 0.9])
def test_relative_score_error_of_a_shifted_exact_score(t):
    """Target N(0, I) in 2-D: p_t = N(0, (1 + sigma^2) I), so E|s|^2 = d / (1 + sigma^2) and the model s + b has
    relative error |b|^2 (1 + sigma^2) / d; the estimate's denominator is a mean of 2048 chi-square(2) draws
    (relative sd 2.2%), so 10% is 4.5 sd."""
    gauss = smc.GaussianMixture([1.0], [[0.0, 0.0]], [1.0])
    exact, b = smc.exact_score(gauss, VE), torch.tensor([0.3, -0.4], dtype=torch.float64)

    class Shifted(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))

        def forward(self, x, tt):
            return exact(x, tt) + b

    ds = relative_score_error(Shifted(), gauss, VE, [t], n=2048)
    want = 0.25 * (1 + float(VE.sigma(t)) ** 2) / 2
    assert float(ds["rel_error"][0]) == pytest.approx(want, rel=0.1)
    assert float(ds["rel_error_se"][0]) < 0.03 * want


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(steps=0), ValueError, "steps"),
    (dict(steps=1.5), TypeError, "steps"),
    (dict(lr=-1.0), ValueError, "lr"),
    (dict(ema=1.0), ValueError, "ema"),
    (dict(batch_size=10, shards=3), ValueError, "batch_size"),
    (dict(dtype="float16"), ValueError, "dtype"),
    (dict(data_order="random"), ValueError, "data_order"),
    (dict(times="uniform"), TypeError, "times"),
    (dict(weighting="edm"), TypeError, "weighting"),
    (dict(t_range=(0.5, 0.1)), ValueError, "t_range"),
    (dict(t_range=(0.1, 2.0)), ValueError, "t_range"),
    (dict(t_range=(0.1, 0.5), t_eps=0.1), ValueError, "t_range or t_eps"),
    (dict(eval_times=(0.5, 3.0)), ValueError, "eval_times"),
    (dict(grad_clip=0.0), ValueError, "grad_clip"),
    (dict(stf_reference="others"), ValueError, "stf_reference"),
])
def test_bad_settings_raise_naming_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        train(make_model(**SMALL), smc.DSM(), GM, VE, progress=False, **{"steps": 1, **kwargs})


def test_stf_reference_forms():
    from scoremc.nn.data import reference_part, reference_size, stf_reference_form

    assert stf_reference_form("auto", smc.STFLoss(64), 32) == "algorithm1"
    assert stf_reference_form("auto", smc.STFLoss(16), 32) == "independent"
    assert stf_reference_form("auto", smc.STFLoss(1), 32) is None and stf_reference_form("auto", smc.DSM(), 8) is None
    assert reference_size(smc.STFLoss(64), 32, "algorithm1") == 32  # the minibatch fills the rest of B_L
    assert reference_size(smc.STFLoss(64), 32, "independent") == 63
    # n_ref = batch_size: Algorithm 1's reference batch is the minibatch itself (no extra draws), also per shard
    for shards in (1, 2):
        r = train(make_model(**SMALL), smc.STFLoss(32), GM, VE, steps=2, batch_size=32, shards=shards,
                  stf_reference="algorithm1", eval_times=(0.5,), eval_points=8, progress=False)
        assert np.all(np.isfinite(r.loss))
    # one extra point and two shards in the independent form: the second shard contributes nothing (not its x0)
    src = ExactTarget(GM)
    x0 = torch.ones(4, 2)
    part = reference_part("independent", src, x0, torch.Generator().manual_seed(0), 0, torch.float32)
    assert part.shape == (0, 2)
    part = reference_part("algorithm1", src, x0, torch.Generator().manual_seed(0), 0, torch.float32)
    assert torch.equal(part, x0)
    with pytest.raises(ValueError, match="n_ref >= batch_size"):
        train(make_model(**SMALL), smc.STFLoss(16), GM, VE, steps=1, batch_size=32, stf_reference="algorithm1",
              progress=False)


def test_bad_arguments_raise():
    with pytest.raises(TypeError, match="model"):
        train(lambda x, t: x, smc.DSM(), GM, VE)
    with pytest.raises(TypeError, match="objective"):
        train(make_model(**SMALL), smc.DSI(), GM, VE)
    with pytest.raises(TypeError, match="proc"):
        train(make_model(**SMALL), smc.DSM(), GM, "ve")
    with pytest.raises(TypeError, match="data"):
        train(make_model(**SMALL), smc.DSM(), [[0.0, 1.0]], VE)
    with pytest.raises(TypeError, match="bare data tensor"):
        train(make_model(**SMALL), smc.TSM(), torch.zeros(5, 2), VE, steps=1, batch_size=4, progress=False)
    with pytest.raises(TypeError, match="config"):
        train(make_model(**SMALL), smc.DSM(), GM, VE, config={"steps": 1})
    with pytest.raises(TypeError, match="weighting"):
        ImportanceTimes("edm")
    cfg = TrainConfig(steps=2, batch_size=8, eval_points=8, eval_times=(0.5,))
    assert train(make_model(**SMALL), smc.DSM(), GM, VE, config=cfg, steps=1, progress=False).loss.shape == (1,)


# -- data parallel (torch.distributed, gloo on CPU) ------------------------------------------------------------------
DDP_SCRIPT = """
import sys, torch, torch.distributed as dist, scoremc as smc
from scoremc import builtin
from scoremc.nn import Preconditioned, ScoreMLP
from scoremc.nn.train import train
dist.init_process_group("gloo")
torch.set_num_threads(1)
objective = {"dsm": smc.DSM(), "stf": smc.STFLoss(8), "stf-algorithm1": smc.STFLoss(40)}[sys.argv[1]]
gm, proc = builtin.fp_gmm(), smc.VE()
torch.manual_seed(0)
model = Preconditioned(ScoreMLP(2, hidden=32, depth=2, embedding=16), proc, "edm", sigma_data=gm.sigma_data)
r = train(model, objective, gm, proc, steps=15, batch_size=32, dtype="float64", lr=3e-3, eval_points=64,
          eval_times=(0.5,), weighting=smc.DSMOptimal(gm.sigma_data), out=sys.argv[3], checkpoint_every=5,
          stf_reference=sys.argv[4], progress=False)
if dist.get_rank() == 0:
    torch.save({"loss": torch.tensor(r.loss), "weights": model.state_dict()}, sys.argv[2])
dist.destroy_process_group()
"""


DDP_CASES = ["dsm", "stf", "stf-algorithm1"]


@pytest.mark.parametrize("objective", DDP_CASES)
def test_two_ranks_equal_one_process_on_the_concatenated_batch(objective, tmp_path):
    # STFLoss(8) < batch_size: the independent form; STFLoss(40) >= batch_size: Algorithm 1's batch
    form = "algorithm1" if objective == "stf-algorithm1" else "independent" if objective == "stf" else "auto"
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    result = tmp_path / "ddp.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           objective, str(result), str(tmp_path / "run"), form]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ddp = torch.load(result, weights_only=True)
    # one process, the same two shards of 16 rows each (their generators seeded by (seed, shard)), one batch of 32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Preconditioned(ScoreMLP(2, hidden=32, depth=2, embedding=16), VE, "edm", sigma_data=GM.sigma_data)
    objective = {"dsm": smc.DSM(), "stf": smc.STFLoss(8), "stf-algorithm1": smc.STFLoss(40)}[objective]
    r = train(model, objective, GM, VE, steps=15, batch_size=32,
              dtype="float64", lr=3e-3, eval_points=64, eval_times=(0.5,), weighting=smc.DSMOptimal(GM.sigma_data),
              shards=2, stf_reference=form, progress=False)
    # equal up to the order of floating-point reductions (the all-reduce of the gradients)
    np.testing.assert_allclose(ddp["loss"].numpy(), r.loss, rtol=1e-10)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(ddp["weights"][k], v, rtol=1e-9, atol=1e-12)
    assert r.loss[0] != r.loss[-1]
    # rank 0 wrote the run folder with every shard's generator state
    state = torch.load(tmp_path / "run" / "step-00000015" / "state.pt", weights_only=True)
    assert len(state["generators"]) == 2 and not torch.equal(state["generators"][0], state["generators"][1])
