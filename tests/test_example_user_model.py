"""Example: testing *your* score model with scoremc in a few lines.

Copy this file into your project's tests. ``my_model`` stands for your trained network: any
callable ``s(x, t)`` on NumPy arrays, or a ``torch.nn.Module`` taking (x, t) tensors.
Here it is a hand-written approximation of the ring target's score, so the file runs as is.
"""
import numpy as np
import pytest

import scoremc as smc
from scoremc import builtin
from scoremc.testing import assert_conservative, assert_score_close, assert_tweedie

target = builtin.ring8()            # 8 Gaussians on the unit circle (FP-Diffusion Listing 3)
proc = smc.VP()


def my_model(x, t):
    """'Learned' score: the exact one, then a 1% perturbation, standing in for a network."""
    return 0.99 * smc.exact_score(target, proc)(x, t)


def my_broken_model(x, t):
    """A model trained with the wrong time convention: it takes sigma(t) where it expects t."""
    return smc.exact_score(target, proc)(x, proc.t_from_sigma(t))


def my_denoiser(x, t):
    """x0-prediction head of the same model, through Tweedie."""
    t = np.asarray(t)
    return (x + proc.sigma(t)[..., None] ** 2 * my_model(x, t)) / proc.alpha(t)[..., None]


def test_my_model_is_close_to_the_exact_score():
    assert_score_close(my_model, target, proc, rtol=0.02)


def test_my_model_is_a_gradient_field():
    assert_conservative(my_model, proc, target, rtol=1e-4)


def test_my_denoiser_and_score_agree():
    assert_tweedie(my_denoiser, my_model, proc, target, rtol=1e-8)


def test_the_broken_model_is_caught():
    # in your suite you would not write this: the check fails with a table by noise level
    with pytest.raises(AssertionError, match="FAIL"):
        assert_score_close(my_broken_model, target, proc, rtol=0.02)
