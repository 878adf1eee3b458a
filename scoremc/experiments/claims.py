"""The seed papers' qualitative claims, each stated as a computed test that can come out "no".

Every claim quotes or paraphrases the paper's text and turns it into a comparison with the numbers
of the sweeps, with a tolerance fixed from the wording or from the Monte Carlo standard errors
(never tuned after seeing the data): "A <= B" means A <= B + K_SE * sqrt(se_A^2 + se_B^2);
"blows up" means a factor BLOWUP between the ends; "almost zero" a factor NEGLIGIBLE below the
comparison; variances below ROUND_OFF of the largest value in their panel are round-off and
compare as equal. Claims that our exact computation contradicts are listed in :data:`EXPECTED_NO`
with the reason; ``tests/test_experiments.py`` fails if any other claim says "no" on the default
run, or if an expected "no" starts to hold.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Claim", "claims", "EXPECTED_NO", "K_SE", "BLOWUP", "NEGLIGIBLE", "VANISHING", "ROUND_OFF",
           "PILOT_EXCESS"]

#: standard errors allowed before "A <= B" fails (3: a 0.13% one-sided false alarm per comparison)
K_SE = 3.0
#: "blows up at t -> 0": at least this factor between the variance at the two ends of the grid
BLOWUP = 10.0
#: "almost zero" / "approximately zero": below this fraction of the quantity it is compared with
NEGLIGIBLE = 1e-2
#: "V -> 0 as t -> 0" vs "stays non-zero": the first grid point below / above this fraction of the maximum
VANISHING = 1e-3
#: variances below this fraction of their panel's maximum are round-off (the float64 trace variance of
#: integrands of size |L| carries ~(eps |L|)^2 d of it), as in the plots (scoremc.plotting.ROUND_OFF_FLOOR)
ROUND_OFF = 1e-12
#: the pointwise-optimal mixture estimates its weight from m pilot draws; by the delta method the
#: variance excess over the exact optimum is E[(w_hat - w*)^2] tr Var(D - T) ~ V(w*) / m when the
#: residual is independent of D - T. PILOT_EXCESS / m allows four times that for dependent draws.
PILOT_EXCESS = 4.0

#: claims our numbers contradict, with the reason (reference/ERRATA.md has the derivations)
EXPECTED_NO = {
    "stf-vdsm-phase2:two-gaussians": "FLAG-S3: with the stated constants the unweighted V_DSM of the two Gaussians "
                                     "is d sigma-hat^2/(sigma^2 S) -> 64 as t -> 0, far above its Phase-2 value; the "
                                     "published Phase-2 peak is the shape of sigma_t^2 V_DSM (next rows)",
    "stf-nref-bound:two-gaussians": "FLAG-S4/S5: the corrected Theorem-2 leading term is "
                                    "E_post[(p(x0|x_t)/p0(x0)) |g - s|^2] / (n_ref - 1), not V_DSM / (n_ref - 1); where "
                                    "the posterior has picked one of the two equal modes the ratio post/p0 is ~2, so "
                                    "(n_ref - 1) V_STF / V_DSM tends to ~2 for large n_ref (the stf_leading column)",
    "tsm-kappa-worse-than-dsi:tsm-easy": "TSM gives no parameters for its easy mixture; in ours, 1/2 N(+-0.5, 0.75), the "
                                         "component variance 0.75 is close to the total 1, so kappa ~ kappa-bar and both "
                                         "beat DSI",
    "tsm-kappabar-beats-kappa:tsm-easy": "as the row above: on our easy mixture kappa and kappa-bar nearly coincide "
                                         "(kappa is the slightly better one)",
    "tsm-kappabar-best-of-both:tsm-hard-different-variance":
        "kappa-bar averages the two component variances (0.05^2 and 0.2^2): near t = 0.15 it over-weights TSI for "
        "the wide mode and is ~3x worse than DSI; the paper's wording ('the best of both') does not hold pointwise "
        "on our instantiation of this target (TSM gives no parameters)",
}


@dataclass(frozen=True)
class Claim:
    key: str
    text: str
    holds: bool
    evidence: str

    @property
    def expected(self) -> bool:
        """True when the verdict is the expected one (holds, or a documented expected "no")."""
        return self.holds != (self.key in EXPECTED_NO)


def _le(a, b, se_a, se_b, scale=0.0):
    """Elementwise a <= b within K_SE combined standard errors and the round-off floor ROUND_OFF * scale."""
    return np.asarray(a) <= np.asarray(b) + K_SE * np.hypot(se_a, se_b) + ROUND_OFF * scale


def _series(ds, target, est):
    sel = ds.sel(target=target, estimator=est)
    return sel["V"].values, sel["V_se"].values


def _stf_dsm(ds):
    out = []
    t = ds["t"].values
    for target in ds["target"].values:
        sel = ds.sel(target=target, estimator="dsi")
        v, wv, logd = sel["V"].values, sel["V_weighted"].sel(weighting="song").values, sel["log_D"].values
        D, se = np.exp(logd), sel["D_se"].values
        rises = np.diff(D) - K_SE * np.hypot(se[1:], se[:-1]) - 1e-9 * D[:-1]  # last term: round-off of a flat D
        out.append(Claim(f"stf-d-decreasing:{target}", f"{target}: D(t) decreases monotonically in t (STF §6.1)",
                         bool(np.all(~(rises > 0))), f"log D from {logd[0]:.3g} to {logd[-1]:.3g}; largest rise "
                         f"beyond {K_SE:g} s.e.: {max(0.0, float(np.nanmax(rises))):.3g}"))
        peak = int(np.argmax(v))
        out.append(Claim(f"stf-vdsm-phase2:{target}", f"{target}: V_DSM peaks in Phase 2, inside (0, 1) (STF Fig. 2(b))",
                         0 < peak < len(t) - 1, f"max {v.max():.3g} at t = {t[peak]:.3g}; V(t={t[0]:.3g}) = {v[0]:.3g}"))
        wpeak = int(np.argmax(wv))
        out.append(Claim(f"stf-sigma2vdsm-phase2:{target}",
                         f"{target}: sigma^2 V_DSM peaks inside (0, 1) (the reading of Fig. 2(b) FLAG-S3 supports)",
                         0 < wpeak < len(t) - 1, f"peak at t = {t[wpeak]:.3g}"))
        vanishes = bool(v[0] < VANISHING * v.max())
        if target == "two-gaussians":
            out.append(Claim(f"stf-vdsm-t0:{target}", f"{target}: V_DSM stays non-zero as t -> 0 (STF §6.1)",
                             not vanishes, f"V(t={t[0]:.3g}) / max V = {v[0] / v.max():.3g} (vanishing below "
                             f"{VANISHING:g})"))
        else:
            out.append(Claim(f"stf-vdsm-t0:{target}", f"{target}: V_DSM -> 0 as t -> 0 for a finite data set "
                             "(STF §6.1)", vanishes, f"V(t={t[0]:.3g}) / max V = {v[0] / v.max():.3g}"))
    return out


def _stf_nref(ds):
    out = []
    t = ds["t"].values
    stf = [e for e in ds["estimator"].values if e != "dsi"]
    n = {e: int(ds["n_ref"].sel(estimator=e)) for e in stf}
    for target in ds["target"].values:
        ok, worst = True, ""
        top = float(ds["V"].sel(target=target).max())
        for a, b in zip(stf, stf[1:]):
            (va, sa), (vb, sb) = _series(ds, target, a), _series(ds, target, b)
            good = _le(vb, va, sb, sa, top)
            if not good.all():
                ok, worst = False, f"{b} > {a} at t = {t[~good][0]:.3g}"
        means = ", ".join(f"{e}: {float(_series(ds, target, e)[0].mean()):.3g}" for e in stf)
        out.append(Claim(f"stf-nref-decreasing:{target}", f"{target}: V_STF decreases with n_ref at every t "
                         "(STF Fig. 3(c,d))", ok, worst or f"time means {means}"))
        if target == "two-gaussians":
            v_dsm, se_dsm = _series(ds, target, "dsi")
            ratios = []
            good_all = True
            for e in stf:
                v, se = _series(ds, target, e)
                good_all &= bool(_le((n[e] - 1) * v, v_dsm, (n[e] - 1) * se, se_dsm, top).all())
                ratios.append(float(np.max((n[e] - 1) * v / v_dsm)))
            out.append(Claim(f"stf-nref-bound:{target}", f"{target}: V_STF <~ V_DSM / (n_ref - 1) (STF Fig. 3(c))",
                             good_all, "max (n_ref - 1) V_STF / V_DSM per n_ref: "
                             + ", ".join(f"{r:.3g}" for r in ratios)))
    return out


def _tsm(ds):
    out = []
    t = ds["t"].values
    targets = list(ds["target"].values)
    mixtures = [g for g in targets if g != "tsm-unit-gaussian"]
    V = {(g, e): _series(ds, g, e) for g in targets for e in ds["estimator"].values}
    top = {g: float(ds["V"].sel(target=g).max()) for g in targets}
    if "tsm-unit-gaussian" in targets:
        g = "tsm-unit-gaussian"
        dsi_max = np.max(V[g, "dsi"][0])
        worst = max(np.max(V[g, "kappa"][0]), np.max(V[g, "kappa_bar"][0]))
        out.append(Claim(f"tsm-kappa-zero:{g}", f"{g}: the kappa and kappa-bar estimators have approximately zero "
                         "variance (TSM §4.1)", bool(worst <= NEGLIGIBLE * dsi_max),
                         f"max V_kappa(bar) = {worst:.3g} vs max V_DSI = {dsi_max:.3g}"))
    for g in [x for x in ("tsm-unit-gaussian", "tsm-easy") if x in targets]:
        dsi, tsi = V[g, "dsi"][0], V[g, "tsi"][0]
        ok = bool(dsi[0] > BLOWUP * dsi[-1] and tsi[-1] > BLOWUP * tsi[0])
        out.append(Claim(f"tsm-opposite:{g}", f"{g}: DSI's variance blows up at t -> 0 and TSI's at t -> 1 (TSM §4.1)",
                         ok, f"V_DSI {dsi[0]:.3g} -> {dsi[-1]:.3g}; V_TSI {tsi[0]:.3g} -> {tsi[-1]:.3g}"))
    if "tsm-easy" in targets:
        g, late = "tsm-easy", t >= 0.2
        (kb, skb), (d, sd), (k, sk) = V[g, "kappa_bar"], V[g, "dsi"], V[g, "kappa"]
        out.append(Claim(f"tsm-kappabar-as-dsi:{g}", f"{g}: kappa-bar performs as well as DSI for t >= 0.2 (TSM §4.1)",
                         bool(_le(kb, d, skb, sd, top[g])[late].all()), f"max V_kappa_bar / V_DSI there = "
                         f"{float(np.max(kb[late] / d[late])):.3g}"))
        out.append(Claim(f"tsm-kappa-worse-than-dsi:{g}", f"{g}: the kappa mixture is not quite as good as DSI for "
                         "t >= 0.2 (TSM §4.1)", bool((~_le(k, d, sk, sd, top[g]))[late].any()),
                         f"max V_kappa / V_DSI there = {float(np.max(k[late] / d[late])):.3g}"))
    for g in [x for x in ("tsm-hard-same-variance", "tsm-hard-different-variance") if x in targets]:
        (kb, skb), (d, sd), (ts, sts) = V[g, "kappa_bar"], V[g, "dsi"], V[g, "tsi"]
        best, se_best = np.where(d <= ts, d, ts), np.where(d <= ts, sd, sts)
        good = _le(kb, best, skb, se_best, top[g])
        out.append(Claim(f"tsm-kappabar-best-of-both:{g}", f"{g}: kappa-bar gives the best of both DSI and TSI "
                         "(TSM §4.1)", bool(good.all()), f"max V_kappa_bar / min(V_DSI, V_TSI) = "
                         f"{float(np.max(kb / best)):.3g}" + ("" if good.all() else f" (fails at t = {t[~good][0]:.3g})")))
    if "tsm-hard-same-variance" in targets:
        g = "tsm-hard-same-variance"
        kb, d = V[g, "kappa_bar"][0], V[g, "dsi"][0]
        out.append(Claim(f"tsm-kappabar-vanishes:{g}", f"{g}: the kappa-bar variance becomes almost zero as t -> 0 "
                         "(TSM §4.1)", bool(kb[0] <= NEGLIGIBLE * d[0]), f"V_kappa_bar / V_DSI at t = {t[0]:.3g}: "
                         f"{kb[0] / d[0]:.3g}"))
    for g in mixtures:
        (kb, skb), (k, sk) = V[g, "kappa_bar"], V[g, "kappa"]
        gap, se = float(np.mean(k) - np.mean(kb)), float(np.sqrt(np.mean(skb**2 + sk**2) / len(t)))
        out.append(Claim(f"tsm-kappabar-beats-kappa:{g}", f"{g}: kappa-bar performs better than kappa on a mixture "
                         "(TSM §4.1)", gap > K_SE * se, f"time-mean V_kappa - V_kappa_bar = {gap:.3g} "
                         f"(s.e. {se:.2g})"))
    excess = 1.0 + PILOT_EXCESS / int(ds.attrs["n_inner"])
    for g in targets:
        (o, so), (d, sd), (ts, sts) = V[g, "optimal"], V[g, "dsi"], V[g, "tsi"]
        best, se_best = np.where(d <= ts, d, ts), np.where(d <= ts, sd, sts)
        good = _le(o, excess * best, so, excess * se_best, top[g])
        out.append(Claim(f"optimal-best:{g}", f"{g}: the pointwise-optimal mixture is never worse than the better "
                         "of DSI/TSI, up to its pilot-weight excess (scoremc, not in the papers)", bool(good.all()),
                         f"max V_optimal / min(V_DSI, V_TSI) = {float(np.max(o / best)):.3g} (allowed "
                         f"{excess:.3g})"))
    return out


def claims(dsm, nref, tsm) -> list[Claim]:
    """All claims on the datasets of the three variance reproductions."""
    return _stf_dsm(dsm) + _stf_nref(nref) + _tsm(tsm)
