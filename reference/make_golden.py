"""Golden values for tests/test_golden.py, computed in mpmath (run ``python reference/make_golden.py``).

Everything here is computed independently of scoremc (never imported) and without float
arithmetic: inputs are decimal strings, the working precision is 40 digits and values are
written as decimal strings with 28 significant digits. Derivatives come from ``mpmath.diff``
(central differences at raised precision), not from the closed forms scoremc uses, and each
value is cross-checked inside this script against a second route before it is written
(closed-form schedule derivatives, score = grad logpdf, Hessian = Jacobian of the score,
Tweedie's first- and second-order identities, the posterior covariance through an mpmath
eigendecomposition, and d/dt log p_t = L[s] of the score FPE). A failed check aborts.

Files written to reference/golden/:
* processes.json: alpha, sigma, dalpha, dsigma, f = dlog(alpha)/dt, g2 = d(sigma^2)/dt - 2 f sigma^2
  and log_snr of VE, VP, SubVP, Cosine and EDM at times including both ends of the domain.
* targets.json: four fixed targets (isotropic, diagonal and full-covariance GaussianMixture, K=3,
  d=2 or 3, and an Empirical of 5 points) and the x points where they are evaluated. All inputs
  are dyadic rationals, so float64 holds them exactly and only t and the process constants are
  rounded when the tests read them (relative effect < 1e-15 here).
* mixtures_<process>.json: for every target and time, the marginal law (weights, means, covs),
  logpdf, score, Hessian, d/dt of the score at fixed x, d/dt of logpdf, and the posterior
  p(x0 | x_t): component weights, means, covariances, total mean and covariance. Times
  include the extremes sigma = 1e-3 (EDM t=1e-3), sigma = 0.01 and 50 (VE endpoints) and
  sigma = 1e3 (EDM t=1e3), where the log-sum-exp over components matters.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import mpmath as mp

mp.mp.dps = 40
DIGITS = 28          # significant digits written (values are accurate to ~35)
CHECK_TOL = mp.mpf("1e-28")
OUT = Path(__file__).resolve().parent / "golden"

# -- processes (Song et al. 2021; Karras et al. 2022); constants are re-parsed at the current precision, so mp.diff's
#    raised working precision sees them exactly as decimal numbers ---------------------------
PROCESS_PARAMS = {
    "VE": {"sigma_min": "0.01", "sigma_max": "50"},
    "VP": {"beta_min": "0.1", "beta_max": "20"},
    "SubVP": {"beta_min": "0.1", "beta_max": "20"},
    "Cosine": {},
    "EDM": {},
}


def schedule(name: str):
    """(alpha(t), sigma(t)) of a process, as functions of an mpf t."""
    p = PROCESS_PARAMS[name]

    def vp_alpha(t):
        b0, b1 = mp.mpf(p["beta_min"]), mp.mpf(p["beta_max"])
        return mp.exp(-t * t * (b1 - b0) / 4 - t * b0 / 2)

    if name == "VE":
        return (lambda t: mp.mpf(1),
                lambda t: mp.mpf(p["sigma_min"]) * (mp.mpf(p["sigma_max"]) / mp.mpf(p["sigma_min"])) ** t)
    if name == "VP":
        return vp_alpha, lambda t: mp.sqrt(1 - vp_alpha(t) ** 2)
    if name == "SubVP":
        return vp_alpha, lambda t: 1 - vp_alpha(t) ** 2
    if name == "Cosine":
        return lambda t: mp.cos(mp.pi * t / 2), lambda t: mp.sin(mp.pi * t / 2)
    if name == "EDM":
        return lambda t: mp.mpf(1), lambda t: t
    raise KeyError(name)


def closed_forms(name: str, t):
    """f and g^2 in the closed forms of reference/derive.py (used only to cross-check mp.diff)."""
    p = {k: mp.mpf(v) for k, v in PROCESS_PARAMS[name].items()}
    if name == "VE":
        sig = schedule(name)[1](t)
        return mp.mpf(0), 2 * mp.log(p["sigma_max"] / p["sigma_min"]) * sig ** 2
    if name in ("VP", "SubVP"):
        beta = p["beta_min"] + t * (p["beta_max"] - p["beta_min"])
        return -beta / 2, beta if name == "VP" else beta * (1 - schedule(name)[0](t) ** 4)
    if name == "Cosine":
        return -mp.pi / 2 * mp.tan(mp.pi * t / 2), mp.pi * mp.tan(mp.pi * t / 2)
    return mp.mpf(0), 2 * t


PROCESS_TIMES = {
    "VE": ["0", "0.001", "0.05", "0.3", "0.7", "0.999", "1"],
    "VP": ["0.001", "0.05", "0.3", "0.7", "0.999", "1"],
    "SubVP": ["0.001", "0.05", "0.3", "0.7", "0.999", "1"],
    "Cosine": ["0.001", "0.05", "0.3", "0.7", "0.999"],
    "EDM": ["0.001", "0.05", "1", "20", "1000"],
}
MIXTURE_TIMES = {
    "VE": ["0", "0.05", "0.3", "0.7", "1"],          # sigma = 0.01 and 50 at the endpoints
    "VP": ["0.05", "0.3", "0.7"],
    "SubVP": ["0.05", "0.3", "0.7"],
    "Cosine": ["0.05", "0.3", "0.7"],
    "EDM": ["0.001", "0.05", "1", "20", "1000"],    # sigma = t
}

# -- targets: dyadic rationals, written exactly ------------------------------------------------
TARGETS = {
    "iso": {
        "type": "GaussianMixture",
        "weights": ["0.5", "0.3125", "0.1875"],
        "means": [["-1.5", "0.5"], ["1", "1"], ["0.25", "-1.25"]],
        "covs": ["0.25", "0.5", "0.125"],
        "x": [["0.25", "0.75"], ["-1.375", "0.625"], ["4", "-3"]],
    },
    "diag": {
        "type": "GaussianMixture",
        "weights": ["0.25", "0.375", "0.375"],
        "means": [["0", "1", "-1"], ["1.5", "-0.5", "0.25"], ["-1", "-1", "2"]],
        "covs": [["0.5", "0.125", "1"], ["1.25", "0.25", "0.0625"], ["0.375", "2", "0.75"]],
        "x": [["0.5", "-0.25", "1"], ["-1.25", "0.75", "0.125"], ["3.5", "2", "-4"]],
    },
    "full": {
        "type": "GaussianMixture",
        "weights": ["0.4375", "0.3125", "0.25"],
        "means": [["1", "0", "-0.5"], ["-1", "1.5", "0.5"], ["0.25", "-1", "1"]],
        "covs": [[["1", "0.25", "0"], ["0.25", "0.5", "0.125"], ["0", "0.125", "0.75"]],
                 [["0.5", "-0.25", "0.125"], ["-0.25", "1.25", "0.25"], ["0.125", "0.25", "0.375"]],
                 [["2", "0.5", "-0.5"], ["0.5", "1", "0"], ["-0.5", "0", "1.5"]]],
        "x": [["0.5", "-0.25", "1"], ["-1.25", "0.75", "0.125"], ["3.5", "2", "-4"]],
    },
    "empirical": {
        "type": "Empirical",
        "points": [["0", "0"], ["1", "0.5"], ["-1", "1"], ["0.5", "-1.5"], ["2", "2"]],
        # on a data point, 1/64 away from one, between points, far from all
        "x": [["1", "0.5"], ["1.015625", "0.484375"], ["-0.5", "0.125"], ["3", "-2.5"]],
    },
}


def mpvec(v):
    return mp.matrix([mp.mpf(e) for e in v])


def parse_target(spec):
    """(weights, means, covs) as mpf / mp.matrix column vectors / d x d mp.matrix."""
    if spec["type"] == "Empirical":
        pts = [mpvec(p) for p in spec["points"]]
        d = len(pts[0])
        return [mp.mpf(1) / len(pts)] * len(pts), pts, [mp.zeros(d, d) for _ in pts]
    means = [mpvec(m) for m in spec["means"]]
    d = len(means[0])
    covs = []
    for c in spec["covs"]:
        if isinstance(c, str):                       # isotropic
            covs.append(mp.mpf(c) * mp.eye(d))
        elif isinstance(c[0], str):                  # diagonal
            covs.append(mp.diag([mp.mpf(e) for e in c]))
        else:                                        # full
            covs.append(mp.matrix([[mp.mpf(e) for e in row] for row in c]))
            mp.cholesky(covs[-1])                    # raises unless positive definite
    return [mp.mpf(w) for w in spec["weights"]], means, covs


def dot(u, v):
    return mp.fsum(u[i] * v[i] for i in range(len(u)))


def logsumexp(values):
    top = max(values)  # shifted, so exp never underflows to an all-zero sum (mpmath would not, but be explicit)
    return top + mp.log(mp.fsum(mp.exp(v - top) for v in values))


class Marginal:
    """p_t = sum_k w_k N(alpha mu_k, C_k), C_k = alpha^2 Sigma_k + sigma^2 I, all in mpmath."""

    def __init__(self, target, alpha, sigma):
        self.w, self.mu, self.Sigma = target
        self.alpha, self.sigma = alpha, sigma
        self.d = len(self.mu[0])
        self.m = [alpha * mu for mu in self.mu]
        self.C = [alpha ** 2 * S + sigma ** 2 * mp.eye(self.d) for S in self.Sigma]
        self.P = [mp.inverse(C) for C in self.C]
        self.log_norm = [mp.log(w) - (self.d * mp.log(2 * mp.pi) + mp.log(mp.det(C))) / 2
                         for w, C in zip(self.w, self.C)]

    def logits(self, x):
        """log w_k + log N(x; alpha mu_k, C_k)."""
        return [ln - dot(x - m, mp.lu_solve(C, x - m)) / 2 for ln, m, C in zip(self.log_norm, self.m, self.C)]

    def logpdf(self, x):
        return logsumexp(self.logits(x))

    def resp(self, x):
        lg = self.logits(x)
        lse = logsumexp(lg)
        return [mp.exp(v - lse) for v in lg]

    def u(self, x):
        return [P * (m - x) for P, m in zip(self.P, self.m)]

    def score(self, x):
        return sum((r * u for r, u in zip(self.resp(x), self.u(x))), mp.zeros(self.d, 1))

    def hessian(self, x):
        s = self.score(x)
        H = -s * s.T
        for r, u, P in zip(self.resp(x), self.u(x), self.P):
            H += r * (u * u.T - P)
        return H

    def posterior(self, x):
        """Component weights, means, covariances, and the total mean and covariance of x0 | x."""
        r = self.resp(x)
        means = [mu + self.alpha * S * mp.lu_solve(C, x - m)
                 for mu, S, C, m in zip(self.mu, self.Sigma, self.C, self.m)]
        covs = [S - self.alpha ** 2 * S * P * S for S, P in zip(self.Sigma, self.P)]
        mean = sum((ri * mi for ri, mi in zip(r, means)), mp.zeros(self.d, 1))
        cov = mp.zeros(self.d, self.d)
        for ri, mi, ci in zip(r, means, covs):
            cov += ri * (ci + (mi - mean) * (mi - mean).T)
        return r, means, covs, mean, cov


def marginal_at(name, target, t):
    alpha, sigma = schedule(name)
    return Marginal(target, alpha(t), sigma(t))


# -- self-checks --------------------------------------------------------------------------------
def norm(a):
    if isinstance(a, mp.matrix):
        return max(abs(a[i, j]) for i in range(a.rows) for j in range(a.cols))
    return abs(a)


def expect(what, got, want, scale=None):
    err = norm(got - want)
    scale = max(norm(want), scale or 0, mp.mpf("1e-300"))
    if not err <= CHECK_TOL * scale:
        raise AssertionError(f"self-check failed: {what}: |diff| = {mp.nstr(err, 5)}, scale {mp.nstr(scale, 5)}")


def grad(fn, x):
    """Gradient of a scalar function of a column vector, by mp.diff in each coordinate."""
    def partial(j):
        return lambda h: fn(x + h * unit(len(x), j))
    return mp.matrix([mp.diff(partial(j), 0) for j in range(len(x))])


def unit(d, j):
    e = mp.zeros(d, 1)
    e[j] = 1
    return e


# -- serialisation ------------------------------------------------------------------------------
def s(v):
    return mp.nstr(v, DIGITS, min_fixed=0, max_fixed=0)


def vec(v):
    return [s(e) for e in v]


def mat(M):
    return [[s(M[i, j]) for j in range(M.cols)] for i in range(M.rows)]


def cov_out(kind, C):
    """A covariance matrix in the shape of its kind: (,) iso, (d,) diag, (d, d) full."""
    if kind == "iso":
        return s(C[0, 0])
    if kind == "diag":
        return [s(C[i, i]) for i in range(C.rows)]
    return mat(C)


def cov_kind(spec):
    if spec["type"] == "Empirical" or isinstance(spec["covs"][0], str):
        return "iso"
    return "diag" if isinstance(spec["covs"][0][0], str) else "full"


def write(name, header, rows_key=None, rows=None):
    """JSON with one line per entry, so the files diff well."""
    text = json.dumps(header, indent=1)
    if rows_key is not None:
        body = ",\n".join("  " + json.dumps(r, separators=(",", ":")) for r in rows)
        text = text[:-2] + f',\n "{rows_key}": [\n{body}\n ]\n}}'
    (OUT / name).write_text(text + "\n")


META = {"generator": "reference/make_golden.py", "mp_dps": 40, "digits": DIGITS,
        "note": "independent mpmath ground truth; derivatives by mpmath.diff; regenerate with "
                "`python reference/make_golden.py`"}


# -- golden tables ------------------------------------------------------------------------------
def process_table(name):
    alpha, sigma = schedule(name)
    rows = []
    for ts in PROCESS_TIMES[name]:
        t = mp.mpf(ts)
        a, sg = alpha(t), sigma(t)
        f = mp.diff(lambda u: mp.log(alpha(u)), t)
        g2 = mp.diff(lambda u: sigma(u) ** 2, t) - 2 * f * sg ** 2
        f_cf, g2_cf = closed_forms(name, t)
        expect(f"{name} t={ts} f", f, f_cf, scale=1)
        expect(f"{name} t={ts} g2", g2, g2_cf)
        rows.append({"t": ts, "alpha": s(a), "sigma": s(sg), "dalpha": s(mp.diff(alpha, t)),
                     "dsigma": s(mp.diff(sigma, t)), "f": s(f), "g2": s(g2),
                     "log_snr": s(2 * (mp.log(a) - mp.log(sg)))})
    return {"name": name, "params": PROCESS_PARAMS[name], "rows": rows}


def mixture_entry(name, tname, spec, ts):
    target = parse_target(spec)
    t = mp.mpf(ts)
    M = marginal_at(name, target, t)
    a, sg, d = M.alpha, M.sigma, M.d
    f = mp.diff(lambda u: mp.log(schedule(name)[0](u)), t)
    g2 = mp.diff(lambda u: schedule(name)[1](u) ** 2, t) - 2 * f * sg ** 2
    kind = cov_kind(spec)
    out = {"process": name, "target": tname, "t": ts, "alpha": s(a), "sigma": s(sg),
           "marginal": {"weights": vec(M.w), "means": [vec(m) for m in M.m],
                        "covs": [cov_out(kind, C) for C in M.C]},
           "logpdf": [], "score": [], "hessian": [], "score_dt": [], "logpdf_dt": [],
           "posterior": {"weights": [], "means": [], "mean": [], "cov": []}}
    # posterior covariances of the components do not depend on x; check them against the
    # eigendecomposition Q diag(lam sigma^2 / (alpha^2 lam + sigma^2)) Q^T
    post_covs = M.posterior(mpvec(spec["x"][0]))[2]
    for S, Cp in zip(M.Sigma, post_covs):
        lam, Q = mp.eigsy(S)
        shrunk = mp.diag([l * sg ** 2 / (a ** 2 * l + sg ** 2) for l in lam])
        expect(f"{name} {tname} t={ts} posterior cov by eigendecomposition", Cp, Q * shrunk * Q.T, scale=norm(S))
    out["posterior"]["covs"] = [cov_out(kind, Cp) for Cp in post_covs]

    for xs in spec["x"]:
        x = mpvec(xs)
        where = f"{name} {tname} t={ts} x={xs}"
        lp, sc, H = M.logpdf(x), M.score(x), M.hessian(x)
        expect(where + " score = grad logpdf", grad(M.logpdf, x), sc, scale=abs(lp))
        jac = mp.matrix(d, d)
        for i in range(d):
            col = grad(lambda y: M.score(y)[i], x)
            for j in range(d):
                jac[i, j] = col[j]
        expect(where + " Hessian = Jacobian of score", jac, H)
        dt = mp.matrix([mp.diff(lambda u: marginal_at(name, target, u).score(x)[i], t) for i in range(d)])
        lp_dt = mp.diff(lambda u: marginal_at(name, target, u).logpdf(x), t)
        # log-density PDE (score FPE before the gradient): d/dt log p_t = L[s]
        div = sum(H[i, i] for i in range(d))
        ss, xs_ = dot(sc, sc), dot(x, sc)
        L = g2 / 2 * (div + ss) - f * xs_ - f * d
        expect(where + " d/dt log p = L[s]", lp_dt, L,
               scale=g2 / 2 * (abs(div) + ss) + abs(f) * (abs(xs_) + d))
        r, means, _, mean, cov = M.posterior(x)
        expect(where + " Tweedie 1", a * mean, x + sg ** 2 * sc, scale=norm(x))
        expect(where + " Tweedie 2", a ** 2 * cov, sg ** 2 * mp.eye(d) + sg ** 4 * H, scale=sg ** 2)
        out["logpdf"].append(s(lp))
        out["score"].append(vec(sc))
        out["hessian"].append(mat(H))
        out["score_dt"].append(vec(dt))
        out["logpdf_dt"].append(s(lp_dt))
        out["posterior"]["weights"].append(vec(r))
        out["posterior"]["means"].append([vec(m) for m in means])
        out["posterior"]["mean"].append(vec(mean))
        out["posterior"]["cov"].append(mat(cov))
    return out


def main():
    start = time.perf_counter()
    OUT.mkdir(exist_ok=True)
    write("processes.json", {"meta": META}, "processes", [process_table(n) for n in PROCESS_PARAMS])
    write("targets.json", {"meta": META, "targets": TARGETS})
    n_entries = 0
    for name in PROCESS_PARAMS:
        entries = [mixture_entry(name, tname, spec, ts)
                   for tname, spec in TARGETS.items() for ts in MIXTURE_TIMES[name]]
        n_entries += len(entries)
        write(f"mixtures_{name}.json", {"meta": META, "process": {"name": name, "params": PROCESS_PARAMS[name]}},
              "entries", entries)
        print(f"  {name}: {len(entries)} entries ({time.perf_counter() - start:.1f}s)")
    size = sum(p.stat().st_size for p in OUT.glob("*.json"))
    print(f"wrote {n_entries} mixture entries and {sum(len(v) for v in PROCESS_TIMES.values())} process rows "
          f"to {OUT} ({size / 1024:.0f} KiB) in {time.perf_counter() - start:.1f}s; all self-checks passed")


if __name__ == "__main__":
    main()
