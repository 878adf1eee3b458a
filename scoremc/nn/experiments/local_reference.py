"""``scoremc experiments local-ref``: a local reference batch for STF (beyond the papers; STF §8), in training.

The variance-engine half is torch-free (:mod:`scoremc.experiments.local_stf`); this module adds the training
half, :func:`training_comparison`, and :func:`run` writes both (``local_stf.*`` and ``local_stf_training.*``).
"""
from __future__ import annotations

import numpy as np
import xarray as xr

from ...experiments import local_stf
from ...local_stf import LocalSTFLoss
from ...objectives import DSM, STFLoss
from ...processes import VE
from ._common import one_thread, train_model

__all__ = ["TRAINING", "training_comparison", "run"]

#: training budget per mode; n_ref is the reference batch size of STFLoss and LocalSTFLoss
TRAINING = {"quick": dict(steps=200, batch_size=128, ema=0.98, eval_every=100, eval_points=512, n_ref=64),
            "report": dict(steps=1500, batch_size=256, ema=0.995, eval_every=250, eval_points=2048, n_ref=64)}


def training_comparison(*, mode: str = "report", seed: int = 0, progress=None) -> xr.Dataset:
    """Relative score error (objective, step, t) of the same seeded network trained with DSM, STFLoss(n) and
    LocalSTFLoss(n, K_NEIGHBORS) on :func:`scoremc.experiments.local_stf.clusters` under VE (same steps, batches,
    times and initial weights); the times are those of :func:`scoremc.experiments.local_stf.experiment`."""
    size = dict(TRAINING[mode])
    n = size.pop("n_ref")
    dist, proc = local_stf.clusters(), VE()
    ts = tuple(float(t) for t in np.linspace(0.3, 0.9, local_stf.SETTINGS[mode][0]))
    objectives = {"dsm": DSM(), "stf": STFLoss(n), "local_stf": LocalSTFLoss(n, local_stf.K_NEIGHBORS)}
    evals = []
    with one_thread():
        for name, objective in objectives.items():
            result = train_model(objective, dist, proc, seed=seed, eval_times=ts, progress=progress, **size)
            evals.append(result.eval.expand_dims(objective=[name]))
    ds = xr.concat(evals, dim="objective")
    ds.attrs.update({f"setting_{k}": v for k, v in TRAINING[mode].items()}
                    | {"setting_k_neighbors": local_stf.K_NEIGHBORS})
    return ds


def run(out_dir, *, quick: bool = False, seed: int = 0, progress=None) -> dict:
    """The variance sweep and the training comparison, written into ``out_dir`` (claims computed from the
    numbers in ``local_stf.md``)."""
    tr = training_comparison(mode="quick" if quick else "report", seed=seed, progress=progress)
    return local_stf.run(out_dir, quick=quick, seed=seed, progress=progress, training=tr)
