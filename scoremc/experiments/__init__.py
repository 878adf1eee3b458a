"""Reproductions of the seed papers' experiments, each writing netCDF + PNG + Markdown.

* :mod:`.stf_variance`, :mod:`.tsm_variance`, :mod:`.report` — estimator-variance sweeps
  (STF Figs. 2(b)/3, TSM Figs. 1-2) and the ``scoremc report`` driver;
* :mod:`.tsm_weightings` — TSM Figs. 3-4 (loss weightings; loss distributions at the true score),
  with ``run(out_dir, *, quick, seed, progress)`` and ``add_parser(subparsers)``.
"""
