"""The training experiments of the seed papers at CPU scale (torch); the registry, the command and the claims
are torch-free, in :mod:`scoremc.experiments.training` and :mod:`scoremc.experiments.training_claims`.

* :mod:`.tsm_training` — TSM Fig. 5 (De Bortoli et al. 2024): DSM, TSM, kappa and kappa-bar models;
* :mod:`.fp_training`  — FP-Diffusion §6.2 (Lai et al. 2023): curl and score-FPE residual;
* :mod:`.stf_training` — STF Fig. 5 direction (Xu et al. 2023): n_ref against variance and early error;
* :mod:`.local_reference` — a local reference batch for STF (beyond the papers, STF §8), in training.

Each module has ``run(out_dir, *, quick=False, seed=0, progress=None) -> dict`` (the written paths) and
``experiment(*, quick, seed, progress) -> xarray.Dataset`` (the numbers, nothing written).
"""
from __future__ import annotations

import importlib

from ...experiments.training import EXPERIMENTS

__all__ = ["run"]


def run(name: str, out_dir, *, quick: bool = False, seed: int = 0, progress=None) -> dict:
    """Run the registered experiment ``name`` (:data:`scoremc.experiments.training.EXPERIMENTS`) into
    ``out_dir``; returns the paths it wrote."""
    if name not in EXPERIMENTS:
        raise ValueError(f"name must be one of {sorted(EXPERIMENTS)}, got {name!r}")
    module = importlib.import_module(EXPERIMENTS[name].module)
    return module.run(out_dir, quick=quick, seed=seed, progress=progress)
