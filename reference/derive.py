"""Symbolic derivations behind scoremc's closed forms (sympy; run ``python reference/derive.py``).

scoremc evaluates every process and every exact score from closed forms. This script re-derives
them from first principles, independently of the package (it never imports scoremc), and exits
non-zero if any identity fails:

1. Processes (Song et al. 2021; the kernels of the seed papers). For VE, VP, SubVP, Cosine and EDM the SDE dx = f x dt + g dw has
   the kernel N(alpha x0, sigma^2 I) exactly when f = d log(alpha)/dt and
   g^2 = d(sigma^2)/dt - 2 f sigma^2. From alpha(t), sigma(t) alone we derive f, g^2, d alpha/dt,
   d sigma/dt and check that they simplify to the closed forms hard-coded in
   ``scoremc/processes.py`` (VP: g^2 = beta; SubVP: beta (1 - alpha^4); Cosine: pi tan(pi t/2);
   VE: 2 ln(smax/smin) sigma^2; EDM: 2t). We also check the inverse maps t(log-SNR), t(sigma).
2. The 1-D Gaussian posterior (TSM Eq. 17, one component): prior N(mu, lam), kernel
   N(alpha x0, sigma^2). Completing the square in x0 gives the posterior mean and variance, and
   the remainder is exactly the marginal N(alpha mu, alpha^2 lam + sigma^2).
3. The marginal score s = (alpha mu - x)/(alpha^2 lam + sigma^2), its exact d/dt at fixed x
   (the formula of ``_dense.dt_score``), and Tweedie's identities
   alpha E[x0|x] = x + sigma^2 s and alpha^2 Var[x0|x] = sigma^2 (1 + sigma^2 ds/dx).
4. The score Fokker-Planck equation (FP-Diffusion Eq. 8) in d = 1:
   ds/dt = d/dx L[s], L[s] = 1/2 g^2 (ds/dx + s^2) - f x s - f, first for generic alpha(t),
   sigma(t), then for each concrete process with its closed-form f and g^2. Since the density
   FPE is linear, one Gaussian component implies every mixture; a two-component mixture is
   also checked numerically to 50 digits.
"""
from __future__ import annotations

import sys

import sympy as sp

t = sp.Symbol("t", positive=True)
x, x0, mu = sp.symbols("x x0 mu", real=True)
lam, a, s = sp.symbols("lam alpha sigma", positive=True)
smin, smax, bmin, bmax = sp.symbols("sigma_min sigma_max beta_min beta_max", positive=True)

FAILURES: list[str] = []


def is_zero(expr) -> bool:
    """True if expr simplifies to 0 (simplify, then trig/exp rewrites, then sympy's equals)."""
    for simp in (sp.simplify, lambda e: sp.simplify(sp.expand_log(sp.expand(e), force=True)),
                 lambda e: sp.simplify(sp.trigsimp(e.rewrite(sp.cos)))):
        if simp(expr) == 0:
            return True
    return bool(expr.equals(0))


def check(name: str, lhs, rhs=0) -> None:
    ok = is_zero(sp.sympify(lhs) - sp.sympify(rhs))
    print(f"  [{'ok' if ok else 'FAIL'}] {name}")
    if not ok:
        FAILURES.append(name)


def gauss_logpdf(y, mean, var):
    return -sp.Rational(1, 2) * sp.log(2 * sp.pi * var) - (y - mean) ** 2 / (2 * var)


# --- 1. processes: alpha, sigma as defined by each process; the rest is derived ------------------------
beta = bmin + t * (bmax - bmin)
alpha_vp = sp.exp(-t ** 2 * (bmax - bmin) / 4 - t * bmin / 2)
PROCESSES = {
    # name: (alpha, sigma, closed f, closed g^2, closed d sigma/dt)   as in scoremc/processes.py
    "VE": (sp.Integer(1), smin * (smax / smin) ** t, 0,
           2 * sp.log(smax / smin) * (smin * (smax / smin) ** t) ** 2, smin * (smax / smin) ** t * sp.log(smax / smin)),
    "VP": (alpha_vp, sp.sqrt(1 - alpha_vp ** 2), -beta / 2, beta,
           alpha_vp ** 2 * beta / (2 * sp.sqrt(1 - alpha_vp ** 2))),
    "SubVP": (alpha_vp, 1 - alpha_vp ** 2, -beta / 2, beta * (1 - alpha_vp ** 4), alpha_vp ** 2 * beta),
    "Cosine": (sp.cos(sp.pi * t / 2), sp.sin(sp.pi * t / 2), -sp.pi / 2 * sp.tan(sp.pi * t / 2),
               sp.pi * sp.tan(sp.pi * t / 2), sp.pi / 2 * sp.cos(sp.pi * t / 2)),
    "EDM": (sp.Integer(1), t, 0, 2 * t, 1),
}


def derived_coefficients(alpha, sigma):
    f = sp.diff(sp.log(alpha), t)
    return f, sp.diff(sigma ** 2, t) - 2 * f * sigma ** 2


print("1. processes: f = dlog(alpha)/dt, g^2 = d(sigma^2)/dt - 2 f sigma^2, derivatives, inverses")
for name, (alpha, sigma, f_closed, g2_closed, dsigma_closed) in PROCESSES.items():
    f, g2 = derived_coefficients(alpha, sigma)
    check(f"{name}: f = {f_closed}", f, f_closed)
    check(f"{name}: g^2 closed form", g2, g2_closed)
    check(f"{name}: d sigma/dt closed form", sp.diff(sigma, t), dsigma_closed)
    check(f"{name}: d alpha/dt = alpha f", sp.diff(alpha, t), alpha * f_closed)

# inverse maps used by Process.t_from_log_snr / t_from_sigma (lam_ = log-SNR, L = -log alpha)
lam_, L, sg = sp.Symbol("lam", real=True), sp.Symbol("L", positive=True), sp.Symbol("s", positive=True)
A, B = (bmax - bmin) / 4, bmin / 2
t_vp = 2 * L / (B + sp.sqrt(B ** 2 + 4 * A * L))
check("VP/SubVP: t = 2L/(b + sqrt(b^2 + 4aL)) solves -log alpha(t) = L", (-sp.log(alpha_vp)).subs(t, t_vp), L)
alpha2 = sp.exp(-2 * sp.log(1 + sp.exp(-lam_)) / 2)     # alpha^2 = exp(-2L) at that L
check("VP: L = log(1 + e^-lam)/2 gives alpha^2/(1 - alpha^2) = e^lam", alpha2 / (1 - alpha2), sp.exp(lam_))
s_sub = 2 / (1 + sp.sqrt(1 + 4 * sp.exp(lam_)))
check("SubVP: sigma = 2/(1 + sqrt(1 + 4 e^lam)) has log-SNR lam", sp.log((1 - s_sub) / s_sub ** 2), lam_)
check("Cosine: t = atan(exp(-lam/2)) / (pi/2) has log-SNR lam",
      sp.log(sp.cot(sp.pi * t / 2) ** 2).subs(t, sp.atan(sp.exp(-lam_ / 2)) * 2 / sp.pi), lam_)
check("VE: t = log(s/smin)/log(smax/smin) has sigma(t) = s",
      PROCESSES["VE"][1].subs(t, sp.log(sg / smin) / sp.log(smax / smin)), sg)

# --- 2. 1-D Gaussian posterior by completing the square --------------------------------------
print("2. posterior of N(mu, lam) prior under the kernel N(alpha x0, sigma^2)")
joint = gauss_logpdf(x0, mu, lam) + gauss_logpdf(x, a * x0, s ** 2)   # log p(x0) + log p(x | x0)
quad = sp.Poly(sp.expand(joint), x0)
precision = -2 * quad.coeff_monomial(x0 ** 2)          # joint = -precision/2 x0^2 + lin x0 + ...
post_var = sp.simplify(1 / precision)
post_mean = sp.simplify(quad.coeff_monomial(x0) / precision)
c = a ** 2 * lam + s ** 2                              # marginal variance
check("posterior variance = lam sigma^2 / (alpha^2 lam + sigma^2)", post_var, lam * s ** 2 / c)
check("posterior mean = mu + alpha lam / c (x - alpha mu)", post_mean, mu + a * lam / c * (x - a * mu))
check("posterior mean = mu sigma^2 / c + alpha lam x / c (fast path)", post_mean, mu * s ** 2 / c + a * lam * x / c)
check("log p(x0) + log p(x|x0) = log N(x0; m, v) + log N(x; alpha mu, c)",
      joint, gauss_logpdf(x0, post_mean, post_var) + gauss_logpdf(x, a * mu, c))

# --- 3. marginal score, its time derivative, Tweedie -----------------------------------------
print("3. one-component marginal score, d/dt at fixed x, Tweedie")
score = sp.diff(gauss_logpdf(x, a * mu, c), x)
check("score = (alpha mu - x)/(alpha^2 lam + sigma^2)", score, (a * mu - x) / c)
check("Tweedie: alpha E[x0|x] = x + sigma^2 s", a * post_mean, x + s ** 2 * score)
check("Tweedie (2nd order): alpha^2 Var[x0|x] = sigma^2 (1 + sigma^2 ds/dx)",
      a ** 2 * post_var, s ** 2 * (1 + s ** 2 * sp.diff(score, x)))

alpha_f, sigma_f = sp.Function("alpha")(t), sp.Function("sigma")(t)   # generic schedules
on_t = {a: alpha_f, s: sigma_f}
score_t = score.subs(on_t)
c_t = c.subs(on_t)
c_dot = 2 * alpha_f * sp.diff(alpha_f, t) * lam + 2 * sigma_f * sp.diff(sigma_f, t)
check("d/dt s = alpha' mu / c - (alpha mu - x) c' / c^2, c' = 2 alpha alpha' lam + 2 sigma sigma'",
      sp.diff(score_t, t), sp.diff(alpha_f, t) * mu / c_t - (alpha_f * mu - x) * c_dot / c_t ** 2)

# --- 4. score Fokker-Planck equation ---------------------------------------------------------
print("4. score FPE  ds/dt = d/dx L[s],  L[s] = 1/2 g^2 (ds/dx + s^2) - f x s - f   (d = 1)")


def fpe_operator(sc, f, g2):
    return g2 / 2 * (sp.diff(sc, x) + sc ** 2) - f * x * sc - f


f_gen, g2_gen = derived_coefficients(alpha_f, sigma_f)
logp_t = gauss_logpdf(x, alpha_f * mu, c_t)
check("generic alpha(t), sigma(t): d/dt log p_t = L[s] (log-density PDE, Eq. 7)",
      sp.diff(logp_t, t), fpe_operator(score_t, f_gen, g2_gen))
check("generic alpha(t), sigma(t): ds/dt - d/dx L[s] = 0 (score FPE, Eq. 8)",
      sp.diff(score_t, t) - sp.diff(fpe_operator(score_t, f_gen, g2_gen), x))
p_t = sp.exp(logp_t)
check("generic: density FPE dp/dt = -d/dx(f x p) + 1/2 g^2 d2p/dx2 (linear, so mixtures follow)",
      (sp.diff(p_t, t) + sp.diff(f_gen * x * p_t, x) - g2_gen / 2 * sp.diff(p_t, x, 2)) / p_t)

for name, (alpha, sigma, f_closed, g2_closed, _) in PROCESSES.items():
    sc = score.subs({a: alpha, s: sigma})
    check(f"{name}: score FPE with closed-form f, g^2",
          sp.diff(sc, t) - sp.diff(fpe_operator(sc, f_closed, g2_closed), x))

# two-component mixture under VP (beta 0.1..20), residual evaluated to 50 digits at a few points
w1, m1, v1, m2, v2 = sp.Rational(3, 10), sp.Rational(-3, 2), sp.Rational(1, 4), sp.Rational(1, 2), sp.Rational(2)
vp = {bmin: sp.Rational(1, 10), bmax: 20}
alpha_n, sigma_n = (e.subs(vp) for e in PROCESSES["VP"][:2])
mix = sp.log(w1 * sp.exp(gauss_logpdf(x, alpha_n * m1, alpha_n ** 2 * v1 + sigma_n ** 2))
             + (1 - w1) * sp.exp(gauss_logpdf(x, alpha_n * m2, alpha_n ** 2 * v2 + sigma_n ** 2)))
sc = sp.diff(mix, x)
residual = sp.diff(sc, t) - sp.diff(fpe_operator(sc, *(e.subs(vp) for e in PROCESSES["VP"][2:4])), x)
worst = max(abs(residual.subs({x: xv, t: tv}).evalf(50)) for xv in (sp.Rational(-2), sp.Rational(1, 3), 3)
            for tv in (sp.Rational(1, 20), sp.Rational(3, 10), sp.Rational(7, 10)))
ok = worst < sp.Float("1e-40")
print(f"  [{'ok' if ok else 'FAIL'}] VP, 2-component mixture: "
      f"max |score-FPE residual| = {float(worst):.1e} (50 digits)")
if not ok:
    FAILURES.append("VP mixture FPE")

print(f"\n{'all checks passed' if not FAILURES else f'{len(FAILURES)} FAILED: ' + '; '.join(FAILURES)}")
sys.exit(1 if FAILURES else 0)
