"""Network preconditioning (Karras et al. 2022; TSM App. D) and parameterisation conversions.

A preconditioned model is ``out = c_skip x + c_out F(c_in x, c_noise)`` trained with the loss
``weight * ||out - target||^2``. :class:`Precond` holds the five coefficients (pure arithmetic of
sigma, alpha and sigma_data, as in EDM's ``get_scalings``) and says what ``out`` predicts:

* :func:`edm_precond` — a denoiser, ``out`` ~ x0 (space ``"x0"``);
* :func:`tsm_precond` — a score, ``out`` ~ alpha^-1 grad log p0(x0) (space ``"score"``).

Both follow Karras' principles for a target N(0, sigma_data^2 I) and F = 0: (i) the network input
c_in x_t has unit variance, (ii) the effective regression target (target - c_skip x_t) / c_out has
unit variance, (iii) weight * c_out^2 = 1, (iv) c_skip minimises |c_out|.

Everything is pure arithmetic written once for NumPy and torch: coefficients take the shape of the
broadcast ``sigma``/``alpha`` (per-row (N, 1) in a training loop, so that they broadcast against
(N, d)); ``Precond.output`` etc. multiply without reshaping.

Conversions between the score s, the denoiser D (x0-prediction) and eps-prediction follow from
Tweedie, alpha E[x0 | x_t] = x_t + sigma^2 grad log p_t(x_t), and x_t = alpha x0 + sigma eps:

    D = (x_t + sigma^2 s) / alpha,   eps_hat = -sigma s = (x_t - alpha D) / sigma.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._array import namespace
from ._validation import as_array, as_coefficient, check_result

__all__ = ["Precond", "edm_precond", "tsm_precond", "denoiser_from_score", "score_from_denoiser",
           "eps_from_score", "score_from_eps", "eps_from_denoiser", "denoiser_from_eps", "EDM_SIGMA_DATA"]

#: Karras et al. (2022)'s data scale for CIFAR-10 in [-1, 1]: the default of the EDM preconditioning
#: and loss weight (the data scale of a scoremc target is ``dist.sigma_data``)
EDM_SIGMA_DATA = 0.5


@dataclass(frozen=True, eq=False)
class Precond:
    """Preconditioning coefficients, each shaped like the broadcast of the inputs (NumPy or torch).

    ``space`` is what ``c_skip x + c_out F`` predicts: ``"x0"`` (denoiser) or ``"score"``;
    ``weight`` is the loss weight in that space. With per-row (N, 1) inputs the coefficients
    broadcast against (N, d) directly.
    """

    c_skip: object
    c_out: object
    c_in: object
    c_noise: object
    weight: object
    space: str

    def output(self, F, x):
        """c_skip x + c_out F for network output ``F`` and input ``x``."""
        return self.c_skip * x + self.c_out * F

    def network_input(self, x):
        """c_in x."""
        return self.c_in * x

    def effective_target(self, target, x):
        """(target - c_skip x) / c_out: what F itself regresses onto."""
        return (target - self.c_skip * x) / self.c_out


def _positive(value, name, xp, like=None):
    arr = as_array(value, name, xp, like=like)
    if bool(xp.any(arr <= 0)):
        raise ValueError(f"{name} must be positive, got {float(xp.reshape(arr[arr <= 0], (-1,))[0])}")
    return arr


def _inputs(sigma, alpha, sigma_data):
    xp = namespace(sigma, alpha)
    sigma = _positive(sigma, "sigma", xp)
    alpha = _positive(alpha, "alpha", xp, like=sigma)
    try:
        np.broadcast_shapes(tuple(sigma.shape), tuple(alpha.shape))
    except ValueError:
        raise ValueError(f"sigma of shape {tuple(sigma.shape)} and alpha of shape {tuple(alpha.shape)} do not "
                         "broadcast") from None
    sd = _positive(sigma_data, "sigma_data", namespace(sigma_data))
    if sd.ndim:
        raise ValueError(f"sigma_data must be a scalar (one data scale), got shape {tuple(sd.shape)}")
    sd = float(sd)
    S = sigma * sigma + alpha * alpha * sd * sd
    return xp, sigma, alpha, sd, S


def edm_precond(sigma, sigma_data: float = EDM_SIGMA_DATA, *, alpha=1.0) -> Precond:
    """EDM denoiser preconditioning (Karras et al. 2022, Table 1 / App. B.6, Eqs. 117, 131, 138, 144):

        c_skip = sigma_d^2 / (sigma^2 + sigma_d^2),   c_out = sigma sigma_d / sqrt(sigma^2 + sigma_d^2),
        c_in = 1 / sqrt(sigma^2 + sigma_d^2),         c_noise = ln(sigma) / 4,
        weight = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2.

    For a kernel x_t = alpha x0 + sigma eps (``alpha`` != 1; the same principles with
    S = sigma^2 + alpha^2 sigma_d^2): c_skip = alpha sigma_d^2 / S, c_out = sigma sigma_d / sqrt(S),
    c_in = 1 / sqrt(S), weight = S / (sigma sigma_d)^2, and c_noise = ln(sigma / alpha) / 4 (EDM's
    conditioning on the effective noise level sigma / alpha; a convention, not derived).
    ``sigma`` and ``alpha`` broadcast; all positive.
    """
    xp, sigma, alpha, sd, S = _inputs(sigma, alpha, sigma_data)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore", under="ignore"):
        return _finite_precond(Precond(c_skip=alpha * sd * sd / S, c_out=sigma * sd / xp.sqrt(S),
                                       c_in=1.0 / xp.sqrt(S), c_noise=0.25 * xp.log(sigma / alpha),
                                       weight=S / (sigma * sd) ** 2, space="x0"))


def tsm_precond(sigma, alpha, sigma_data: float = 1.0) -> Precond:
    """TSM preconditioning of TSM App. D, with the erratum FLAG-T2, in score space:

        s_theta(y) = c_out F(c_in y) + c_skip y,   loss weight * ||s_theta(Y) - alpha^-1 grad log p0(X)||^2,
        weight = alpha^2 sigma_d^2 S / sigma^2,   c_out = -sigma / (alpha sigma_d sqrt(S)),
        c_skip = -1 / S,   c_in = 1 / sqrt(S),   S = sigma^2 + alpha^2 sigma_d^2,

    i.e. s_theta(y) = -(1/alpha) [sigma F / (sigma_d sqrt(S)) + alpha y / S]; the paper prints
    alpha^2 y / S, which does not give c_skip y = -y / S (FLAG-T2). Related to the alpha-EDM
    constants of the scaled data alpha X by TSM Eq. 27: weight' = weight / (alpha sigma_d)^4,
    c_out' = -(alpha sigma_d)^2 c_out, c_skip' = -(alpha sigma_d)^2 c_skip.
    c_noise = ln(sigma / alpha) / 4 (as :func:`edm_precond`; TSM conditions F on sigma).
    """
    xp, sigma, alpha, sd, S = _inputs(sigma, alpha, sigma_data)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore", under="ignore"):
        return _finite_precond(Precond(c_skip=-1.0 / S, c_out=-sigma / (alpha * sd * xp.sqrt(S)),
                                       c_in=1.0 / xp.sqrt(S), c_noise=0.25 * xp.log(sigma / alpha),
                                       weight=(alpha * sd) ** 2 * S / sigma**2, space="score"))


def _finite_precond(p: Precond) -> Precond:
    """No silent inf/NaN: sigma, alpha or sigma_data so extreme that a coefficient over- or underflows
    (sigma^2 beyond ~1e308, 1/sigma^2 for sigma below ~1e-154) raise ValueError naming them."""
    for field in ("c_skip", "c_out", "c_in", "c_noise", "weight"):
        check_result(getattr(p, field), "sigma, alpha or sigma_data", f"the coefficient {field}")
    return p


def _finite(out, name):
    return check_result(out, name, "the conversion")


def _field(value, name, like):
    """A (..., d) array (a score, a denoiser output, eps) of the namespace and shape of ``like``."""
    xp = namespace(value, like)
    arr = as_array(value, name, xp, like=like)
    if tuple(arr.shape) != tuple(like.shape):
        raise ValueError(f"{name} must have the shape of x {tuple(like.shape)}, got {tuple(arr.shape)}")
    return arr


def _coef(value, name, like):
    """A per-row coefficient; alpha and sigma divide somewhere in these conversions, so they must be
    positive (sigma = 0 is a point mass: the score does not exist there)."""
    arr = as_coefficient(value, name, like)
    try:
        np.broadcast_shapes(tuple(arr.shape), tuple(like.shape))
    except ValueError:
        raise ValueError(f"{name} of shape {tuple(arr.shape)} does not broadcast against the points' shape "
                         f"{tuple(like.shape)} (a scalar or one value per row, (..., 1))") from None
    xp = namespace(arr)
    if bool(xp.any(arr <= 0)):
        raise ValueError(f"{name} must be positive, got {float(xp.reshape(arr[arr <= 0], (-1,))[0])}")
    return arr


def denoiser_from_score(s, x, alpha, sigma):
    """D = (x + sigma^2 s) / alpha (Tweedie; TSM §1.2). ``s``, ``x`` (..., d); alpha, sigma scalars or
    per-row (..., 1)."""
    x = as_array(x, "x", min_ndim=1)
    s = _field(s, "s", x)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        return _finite((x + _coef(sigma, "sigma", x) ** 2 * s) / _coef(alpha, "alpha", x), "s, x, alpha or sigma")


def score_from_denoiser(D, x, alpha, sigma):
    """s = (alpha D - x) / sigma^2 (inverse of :func:`denoiser_from_score`)."""
    x = as_array(x, "x", min_ndim=1)
    D = _field(D, "D", x)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        return _finite((_coef(alpha, "alpha", x) * D - x) / _coef(sigma, "sigma", x) ** 2, "D, x, alpha or sigma")


def eps_from_score(s, sigma):
    """eps_hat = -sigma s (since grad log p(x_t | x0) = -eps / sigma)."""
    s = as_array(s, "s", min_ndim=1)
    with np.errstate(over="ignore", invalid="ignore"):
        return _finite(-_coef(sigma, "sigma", s) * s, "sigma")


def score_from_eps(eps_hat, sigma):
    """s = -eps_hat / sigma."""
    eps_hat = as_array(eps_hat, "eps_hat", min_ndim=1)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        return _finite(-eps_hat / _coef(sigma, "sigma", eps_hat), "sigma")


def eps_from_denoiser(D, x, alpha, sigma):
    """eps_hat = (x - alpha D) / sigma."""
    x = as_array(x, "x", min_ndim=1)
    D = _field(D, "D", x)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        return _finite((x - _coef(alpha, "alpha", x) * D) / _coef(sigma, "sigma", x), "sigma")


def denoiser_from_eps(eps_hat, x, alpha, sigma):
    """D = (x - sigma eps_hat) / alpha."""
    x = as_array(x, "x", min_ndim=1)
    eps_hat = _field(eps_hat, "eps_hat", x)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        return _finite((x - _coef(sigma, "sigma", x) * eps_hat) / _coef(alpha, "alpha", x), "alpha")
