"""Shipped score models: a folder with the weights, how they were made, and a card of measured errors.

Layout of a model folder (``models/NAME/`` in the repository)::

    model.safetensors   the EMA weights of the run (safetensors: no pickle)
    model.json          what rebuilds the module: the model spec, process, target, objective, the run's settings
    recipe.sh           the exact commands that made it (seeded; re-running them reproduces the weights on CPU)
    card.json           the measured errors, for programs: target, process, objective, rel_score_error {t: value},
                        its standard errors, and the end-to-end metrics (MMD, sliced Wasserstein, KL) with their
                        noise floors
    card.md             the same for people, with the plot ``card.png``

:func:`ship` makes such a folder from a training run folder (:mod:`scoremc.nn.checkpoint`); :func:`load` returns
the score callable s(x, t) of a model folder *or* of a run folder; :func:`recheck` re-measures a card's numbers
(the tests call it for every shipped model).
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np

from .._io import atomic_path, write_text
from ..builtin import TARGETS
from .checkpoint import (CONFIG, build_model, build_process, latest_weights_path, load_checkpoint, read_config,
                         read_weights, with_weights)
from .evaluate import end_to_end as measure_end_to_end
from .evaluate import relative_score_error

__all__ = ["load", "ship", "measure", "read_card", "read_model_spec", "recheck", "process_name", "CARD", "MODEL",
           "EVAL_TIMES"]

CARD = "card.json"
MODEL = "model.json"
WEIGHTS = "model.safetensors"
#: the noise levels of a card: 12 times over [0.05, 1] (the interval issue 11's DSM goal averages over)
EVAL_TIMES = tuple(float(t) for t in np.linspace(0.05, 1.0, 12))


def process_name(proc) -> str:
    """The name ``scoremc variance --process`` takes for ``proc``'s type (e.g. "ve")."""
    from ..cli import PROCESS_NAMES

    for name, kind in PROCESS_NAMES.items():
        if type(proc) is kind:
            return name
    raise ValueError(f"{proc!r} has no command-line name")


def load(folder, device=None, *, dtype=None):
    """The score model s(x (N, d), t (N,)) -> (N, d) of ``folder``, an ``nn.Module`` in eval mode on ``device``
    (default CPU) with its preconditioning applied: a shipped model folder (``model.json`` +
    ``model.safetensors``) or a training run folder (its latest checkpoint's EMA weights). ``dtype``: cast the
    weights (default: as stored, float32)."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"folder={folder!r} is not a folder")
    if os.path.exists(os.path.join(folder, MODEL)):
        weights = read_weights(os.path.join(folder, WEIGHTS), device)
        model = with_weights(build_model(read_model_spec(folder)["model_spec"]), weights, device)
    elif os.path.exists(os.path.join(folder, CONFIG)):
        model = load_checkpoint(folder, device)
    else:
        raise FileNotFoundError(f"{folder!r} holds neither {MODEL} (a shipped model) nor {CONFIG} (a training run)")
    if dtype is not None:
        model = model.to(dtype=dtype)
    return model.eval()


def _read_json(folder, name: str) -> dict:
    path = os.path.join(os.fspath(folder), name)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{folder!r} holds no {name}")
    with open(path) as fh:
        return json.load(fh)


def read_card(folder) -> dict:
    """A model folder's ``card.json``."""
    return _read_json(folder, CARD)


def read_model_spec(folder) -> dict:
    """A shipped model folder's ``model.json``: target, process name, objective, model spec, run settings."""
    return _read_json(folder, MODEL)


def _by_t(ts, values) -> dict:
    """A card's mapping t -> value (keys with 6 significant digits)."""
    return {f"{float(t):.6g}": float(v) for t, v in zip(ts, values)}


def measure(model, dist, proc, *, n: int = 4096, seed: int = 0, end_to_end: dict | None = None,
            progress=None) -> dict:
    """What a card records of ``model`` on ``dist`` under ``proc``: the relative score error at
    :data:`EVAL_TIMES` (``n`` draws per time, generator seed ``seed``) and, with ``end_to_end`` settings, the
    end-to-end metrics of :func:`scoremc.nn.evaluate.end_to_end`."""
    ds = relative_score_error(model, dist, proc, EVAL_TIMES, n=n, seed=seed)
    out = {"rel_score_error": _by_t(ds["t"].values, ds["rel_error"].values),
           "rel_score_error_se": _by_t(ds["t"].values, ds["rel_error_se"].values),
           "sigma": ds["sigma"].values.tolist(), "rel_score_error_mean": float(ds["rel_error"].mean())}
    if end_to_end is not None:
        out["end_to_end"] = measure_end_to_end(model, dist, proc, progress=progress, **end_to_end)
    return out


def ship(run, folder, *, name: str, recipe: str, n: int = 4096, seed: int = 0, end_to_end: dict | None = None,
         progress=None) -> dict:
    """Make the model folder ``folder`` from the training run folder ``run``: copy its EMA weights, write
    ``model.json``, ``recipe.sh`` (``recipe``: the commands), and measure and write the card
    (:func:`measure`). Returns the card."""
    run, folder = os.fspath(run), os.fspath(folder)
    config = read_config(run)
    target = (config.get("meta") or {}).get("target")
    if target not in TARGETS:
        raise ValueError(f"the run in {run!r} trained on {target!r}, not a built-in target: only runs of "
                         "`scoremc train --target NAME` can be shipped with a card")
    if config.get("model_spec") is None:
        raise ValueError(f"the run in {run!r} trained a module that load() cannot rebuild")
    dist, proc = TARGETS[target](), build_process(config["process"])
    os.makedirs(folder, exist_ok=True)
    with atomic_path(os.path.join(folder, WEIGHTS)) as tmp:
        shutil.copyfile(latest_weights_path(run, "ema"), tmp)
    spec = {"name": name, "target": target, "process": process_name(proc), "objective": config["objective"],
            "model_spec": config["model_spec"], "data": config["data"], "settings": config["settings"],
            "t_range": config["t_range"], "versions": config["versions"],
            "command": (config.get("meta") or {}).get("command")}
    write_text(os.path.join(folder, MODEL), json.dumps(spec, indent=1) + "\n")
    write_text(os.path.join(folder, "recipe.sh"), "#!/usr/bin/env bash\n# the commands that made this model "
               "(run from the repository root; seeded, CPU)\nset -euo pipefail\n" + recipe.strip() + "\n")
    measured = measure(load(folder), dist, proc, n=n, seed=seed, end_to_end=end_to_end, progress=progress)
    card = {"name": name, "target": target, "process": spec["process"], "process_spec": config["process"],
            "objective": config["objective"], "steps": config["settings"]["steps"],
            "eval": {"n": n, "seed": seed, "end_to_end": end_to_end}, **measured}
    write_text(os.path.join(folder, CARD), json.dumps(card, indent=1) + "\n")
    _write_markdown(folder, card, dist, proc)
    return card


def recheck(folder, *, end_to_end: bool = True, progress=False) -> tuple[dict, dict]:
    """Re-measure a model folder's card with the card's own settings: (card, measured), the measured dict in
    the card's layout (``rel_score_error`` keyed by t)."""
    card = read_card(folder)
    spec = read_model_spec(folder)
    dist, proc = TARGETS[spec["target"]](), build_process(spec["model_spec"]["process"])
    settings = card["eval"]
    e2e = settings.get("end_to_end") if end_to_end else None
    return card, measure(load(folder), dist, proc, n=settings["n"], seed=settings["seed"], end_to_end=e2e,
                         progress=progress)


def _write_markdown(folder, card: dict, dist, proc) -> None:
    from ..plotting import figure, save_figure

    ts = [float(t) for t in card["rel_score_error"]]
    errs = list(card["rel_score_error"].values())
    ses = list(card["rel_score_error_se"].values())
    sig = np.asarray(proc.sigma(np.asarray(ts)), dtype=np.float64)
    fig, axes = figure(figsize=(5.6, 3.8))
    ax = axes[0, 0]
    ax.errorbar(sig, errs, yerr=2 * np.asarray(ses), marker="o", markersize=3, capsize=2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(r"$\sigma(t)$")
    ax.set_ylabel(r"$E\|s_\theta-\nabla\log p_t\|^2/E\|\nabla\log p_t\|^2$")
    ax.set_title(f"{card['name']}: {card['objective']} on {card['target']}, {proc!r}", fontsize=8)
    ax.grid(alpha=0.3, which="both")
    save_figure(fig, os.path.join(folder, "card.png"))
    rows = "\n".join(f"| {t:.4g} | {s:.4g} | {e:.4g} | {se:.2g} |" for t, s, e, se in zip(ts, sig, errs, ses))
    lines = [f"# {card['name']}", "",
             f"A `Preconditioned(ScoreMLP)` score model trained with `{card['objective']}` on the built-in target "
             f"`{card['target']}` ({dist!r}) under `{proc!r}` for {card['steps']} steps. Load it with "
             f"`scoremc.nn.load(\"models/{card['name']}\")`; `recipe.sh` holds the commands that made it.", "",
             f"Relative score error E‖s_θ − ∇log p_t‖² / E‖∇log p_t‖² over x_t ~ p_t ({card['eval']['n']} exact draws "
             f"per time, seed {card['eval']['seed']}); mean over the {len(ts)} times: "
             f"**{card['rel_score_error_mean']:.4g}**.", "", "![relative score error](card.png)", "",
             "| t | σ(t) | relative score error | s.e. |", "|---|---|---|---|", rows, ""]
    e2e = card.get("end_to_end")
    if e2e:
        lines += ["End to end (model samples and PF-ODE likelihood against the exact target):", "",
                  "| metric | model | noise floor (exact vs exact) |", "|---|---|---|"]
        for key, floor in (("mmd", "mmd_floor"), ("sliced_wasserstein", "sliced_wasserstein_floor")):
            if key in e2e:
                lines.append(f"| {key} | {e2e[key]:.4g} | {e2e.get(floor, float('nan')):.4g} |")
        if "kl" in e2e:
            lines.append(f"| KL(p0 ‖ p_θ) (nats) | {e2e['kl']:.4g} ± {e2e.get('kl_se', float('nan')):.2g} | 0 |")
        lines.append("")
    write_text(os.path.join(folder, "card.md"), "\n".join(lines))
