"""scoremc.testing: every assertion passes on the exact score and fails, with a table by noise
level, on broken scores (mutation tests); the statistical check's false-alarm rate is measured."""
import numpy as np
import pytest

import scoremc as smc
from scoremc.identities import DSI, TSI, KappaBar, Mix, PointwiseIdentity
from scoremc.testing import (assert_conservative, assert_estimator_unbiased, assert_fpe_consistent,
                             assert_score_close, assert_tweedie)
from scoremc.testing import mutations as mut

DIST = smc.GaussianMixture([0.3, 0.7], [[-1.5, 0.5], [1.0, -0.5]], [[0.3, 0.6], [0.5, 0.2]])
PROC = smc.VP()
TS = np.array([0.1, 0.4, 0.8])
EXACT = smc.exact_score(DIST, PROC)

BROKEN = {
    "scaled x1.1": mut.scaled(EXACT, 1.1),
    "missing component": mut.missing_component(DIST, PROC, 0),
    "rotational field": mut.rotational(EXACT, 0.5),
    "sigma <-> t": mut.wrong_time(EXACT, PROC),
}


def _fails_with_table(check, *args, **kwargs):
    with pytest.raises(AssertionError) as info:
        check(*args, **kwargs)
    text = str(info.value)
    assert "FAIL" in text and "sigma" in text and "tolerance" in text
    return text


def test_score_close_passes_exact_and_catches_all_mutations():
    report = assert_score_close(EXACT, DIST, PROC, rtol=0.02, ts=TS)
    assert report.ok and len(report.rows) == len(TS)
    for name, model in BROKEN.items():
        _fails_with_table(assert_score_close, model, DIST, PROC, rtol=0.02, ts=TS)


def test_tweedie_passes_exact_and_catches_all_mutations():
    def denoiser(x, t):  # the exact posterior mean of x0
        return np.stack([smc.posterior(DIST, PROC, float(tj), xi[None]).mean()[0] for xi, tj in zip(x, t)])

    assert assert_tweedie(denoiser, EXACT, PROC, DIST, rtol=1e-8, ts=TS, n=32).ok
    for name, model in BROKEN.items():
        _fails_with_table(assert_tweedie, denoiser, model, PROC, DIST, rtol=0.02, ts=TS, n=32)


def test_fpe_consistency_passes_exact_and_catches_three_mutations():
    # a missing component is still an exact score (of another mixture): the FPE cannot see it
    assert assert_fpe_consistent(EXACT, PROC, DIST, rtol=1e-3, ts=TS, n=16).ok
    for name in ("scaled x1.1", "rotational field", "sigma <-> t"):
        _fails_with_table(assert_fpe_consistent, BROKEN[name], PROC, DIST, rtol=0.05, ts=TS, n=16)
    assert_fpe_consistent(BROKEN["missing component"], PROC, DIST, rtol=1e-3, ts=TS, n=16)


def test_conservativity_passes_exact_and_catches_non_gradient_fields():
    # scaling, a missing component and a time mix-up keep a gradient field; these do not
    assert assert_conservative(EXACT, PROC, DIST, rtol=1e-4, ts=TS, n=16).ok
    for model in (BROKEN["rotational field"], mut.anisotropic(EXACT, (1.0, 1.3)), mut.rotated_output(EXACT, 0.3)):
        _fails_with_table(assert_conservative, model, PROC, DIST, rtol=1e-3, ts=TS, n=16)


class _Broken(PointwiseIdentity):
    """A DSI whose integrand is wrong in a chosen way (mutation of an estimator)."""

    def __init__(self, how):
        self.how = how

    @property
    def name(self):
        return f"broken-dsi({self.how})"

    def integrand(self, dist, coef, x0, xt, rng=None):
        if self.how == "scaled":
            return 1.1 * DSI().integrand(dist, coef, x0, xt)
        if self.how == "time":
            return DSI().integrand(dist, coef.process.at(np.minimum(1.0, 1.2 * coef.t)), x0, xt)
        # "sign": the kernel's gradient taken with respect to x0 instead of x_t
        return -DSI().integrand(dist, coef, x0, xt)

    def trace_cov(self, post):
        return None


@pytest.mark.parametrize("identity", [DSI(), TSI(), Mix(KappaBar())], ids=lambda i: i.name)
def test_estimator_unbiased_passes_correct_identities(identity):
    assert assert_estimator_unbiased(identity, DIST, PROC, ts=TS, level=1e-3).ok


@pytest.mark.parametrize("how", ["scaled", "time", "sign"])
def test_estimator_unbiased_catches_broken_identities(how):
    _fails_with_table(assert_estimator_unbiased, _Broken(how), DIST, PROC, ts=TS, level=1e-3)


def _false_alarms(seeds, level):
    fails = 0
    for seed in seeds:
        try:
            assert_estimator_unbiased(DSI(), DIST, PROC, ts=TS, n_points=2, n=400, level=level, seed=seed)
        except AssertionError:
            fails += 1
    return fails


def test_false_alarm_rate_smoke():
    # 40 runs at a stated rate of 0.1: more than 10 failures has probability < 0.3% (binomial)
    assert _false_alarms(range(40), 0.1) <= 10


@pytest.mark.slow
def test_false_alarm_rate_is_below_the_stated_level():
    # 400 runs at 0.05: the stated rate is an upper bound (Bonferroni); more than 32 failures
    # has probability < 0.1% under Binomial(400, 0.05)
    assert _false_alarms(range(400), 0.05) <= 32


def test_torch_models_are_accepted():
    torch = pytest.importorskip("torch")

    class ExactAsModule(torch.nn.Module):
        def forward(self, x, t):
            return torch.as_tensor(EXACT(x.double().numpy(), t.double().numpy()), dtype=x.dtype)

    assert assert_score_close(ExactAsModule().double(), DIST, PROC, rtol=1e-10, ts=TS).ok


def test_plugin_fixtures(scoremc_rng, scoremc_targets, scoremc_processes):
    assert isinstance(scoremc_rng, np.random.Generator)
    assert "tsm-easy" in scoremc_targets and "vp" in scoremc_processes
    assert_score_close(smc.exact_score(scoremc_targets["ring8"], scoremc_processes["vp"]), scoremc_targets["ring8"],
                       scoremc_processes["vp"], rtol=1e-12, n=32)
