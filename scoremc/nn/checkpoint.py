"""Training checkpoints: atomic, resumable, pickle-free.

Layout of a run folder ``out/``::

    config.json                  the run: objective, process, data, model spec, every setting (written first)
    checkpoint.json              the commit record of the latest checkpoint: {"step": k, "folder": "step-..."}
    step-00001000/model.safetensors   the trained weights (safetensors: no pickle)
    step-00001000/ema.safetensors     the EMA weights
    step-00001000/state.pt            optimizer and EMA state, step, loss history, torch.Generator states
                                      (plain tensors and containers: loads with torch.load(weights_only=True))
    eval.nc                      the evaluation by step and t (netCDF), when the data has exact laws

A checkpoint is written into a temporary folder that is then renamed into place, and becomes the latest
only when ``checkpoint.json`` is replaced atomically (temporary file + ``os.replace``) to name it; the
previous checkpoint is removed after that. A run killed at any instant leaves the last committed
checkpoint intact (an uncommitted folder is ignored and cleaned up on resume).
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
import tempfile

import torch

from .._io import write_text
from ..processes import PROCESSES, Process
from .models import Preconditioned, ScoreMLP

__all__ = ["CONFIG", "LATEST", "write_config", "read_config", "save_checkpoint", "load_state", "has_checkpoint",
           "load_checkpoint", "with_weights", "read_weights", "latest_weights_path", "model_spec", "build_model",
           "process_spec", "build_process", "check_resume", "concat_evals", "save_evals", "load_evals"]

CONFIG = "config.json"
LATEST = "checkpoint.json"
_PROCESS_TYPES = {type(p).__name__: type(p) for p in PROCESSES}


# -- describing and rebuilding a model ---------------------------------------------------------------------------
def process_spec(proc: Process) -> dict:
    return {"type": type(proc).__name__, **dataclasses.asdict(proc)}


def build_process(spec: dict) -> Process:
    spec = dict(spec)
    kind = spec.pop("type")
    if kind not in _PROCESS_TYPES:
        raise ValueError(f"unknown process type {kind!r} in the checkpoint; known: {sorted(_PROCESS_TYPES)}")
    return _PROCESS_TYPES[kind](**spec)


def model_spec(model) -> dict | None:
    """The constructor arguments that rebuild ``model`` (a ``Preconditioned(ScoreMLP)``), or None for other
    modules (whose weights :func:`load_checkpoint` then loads into a ``model=`` you pass)."""
    if not (isinstance(model, Preconditioned) and isinstance(model.net, ScoreMLP)):
        return None
    net = model.net
    return {"type": "Preconditioned", "precond": model.precond, "output": model.output,
            "sigma_data": model.sigma_data, "process": process_spec(model.proc),
            "net": {"type": "ScoreMLP", "dim": net.dim, "hidden": net.head.in_features, "depth": len(net.body) // 2,
                    "embedding": net.embed.dim}}


def build_model(spec: dict):
    net = spec["net"]
    if spec.get("type") != "Preconditioned" or net.get("type") != "ScoreMLP":
        raise ValueError(f"cannot rebuild the model {spec!r}; pass model=")
    mlp = ScoreMLP(net["dim"], hidden=net["hidden"], depth=net["depth"], embedding=net["embedding"])
    output = spec["output"] if spec["precond"] is None else None
    return Preconditioned(mlp, build_process(spec["process"]), spec["precond"], sigma_data=spec["sigma_data"],
                          output=output)


# -- writing ----------------------------------------------------------------------------------------------------
def write_config(out, run: dict) -> str:
    return write_text(os.path.join(out, CONFIG), json.dumps(run, indent=1) + "\n")


def read_config(out) -> dict:
    path = os.path.join(out, CONFIG)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{out!r} holds no {CONFIG}: not a scoremc training folder")
    with open(path) as fh:
        return json.load(fh)


def has_checkpoint(out) -> bool:
    return os.path.exists(os.path.join(out, LATEST))


def _contiguous(state: dict) -> dict:
    return {k: v.detach().contiguous() for k, v in state.items()}


def save_checkpoint(out, step: int, model, ema_model, state: dict) -> str:
    """Write the checkpoint of ``step`` (weights of ``model`` and ``ema_model`` as safetensors, ``state`` through
    torch.save) and commit it; returns its folder."""
    from safetensors.torch import save_file

    name = f"step-{step:08d}"
    final = os.path.join(out, name)
    tmp = tempfile.mkdtemp(dir=out, prefix=".tmp-step-")
    try:
        meta = {"format": "pt"}  # one key: safetensors writes metadata in hash order, so more would vary by process
        save_file(_contiguous(model.state_dict()), os.path.join(tmp, "model.safetensors"), metadata=meta)
        save_file(_contiguous(ema_model.state_dict()), os.path.join(tmp, "ema.safetensors"), metadata=meta)
        torch.save(state, os.path.join(tmp, "state.pt"))
        _permissions(tmp)
        if os.path.exists(final):  # an uncommitted leftover of a killed run (the committed one is never rewritten)
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    write_text(os.path.join(out, LATEST), json.dumps({"step": step, "folder": name}) + "\n")  # the commit
    _clean(out, keep=name)
    return final


def _permissions(folder) -> None:
    """mkdtemp makes a 0700 folder: give the checkpoint the usual permissions of the user's umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for name in os.listdir(folder):
        os.chmod(os.path.join(folder, name), 0o666 & ~umask)


def _clean(out, keep: str) -> None:
    """Remove every checkpoint folder but ``keep`` and leftover temporary folders."""
    for path in glob.glob(os.path.join(out, "step-*")) + glob.glob(os.path.join(out, ".tmp-step-*")):
        if os.path.basename(path) != keep:
            shutil.rmtree(path, ignore_errors=True)


# -- reading ----------------------------------------------------------------------------------------------------
def _latest(out) -> tuple[int, str]:
    path = os.path.join(out, LATEST)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{out!r} holds no checkpoint ({LATEST} is missing)")
    with open(path) as fh:
        rec = json.load(fh)
    return int(rec["step"]), os.path.join(out, rec["folder"])


def _weights(folder, which: str, device) -> dict:
    return read_weights(os.path.join(folder, f"{which}.safetensors"), device)


def read_weights(path, device=None) -> dict:
    """A safetensors state dict, its tensors on ``device`` (default CPU)."""
    from safetensors.torch import load_file

    return load_file(path, device=str(device) if device is not None else "cpu")


def load_state(out, device=None) -> dict:
    """The latest committed checkpoint: {"step", "model", "ema" (state dicts), **state.pt}."""
    step, folder = _latest(out)
    state = torch.load(os.path.join(folder, "state.pt"), map_location=device if device is not None else "cpu",
                       weights_only=True)
    if int(state["step"]) != step:
        raise ValueError(f"checkpoint {folder!r} is inconsistent: state.pt has step {state['step']}, {LATEST} {step}")
    return {**state, "model": _weights(folder, "model", device), "ema": _weights(folder, "ema", device)}


def load_checkpoint(folder, device=None, *, ema: bool = True, model=None):
    """The score model s(x, t) of the latest checkpoint in the run folder ``folder``, in eval mode on
    ``device`` (default CPU), with the EMA weights (``ema=False``: the raw trained weights).

    A ``Preconditioned(ScoreMLP(...))`` is rebuilt from ``config.json``; for any other module pass a ``model``
    of the same architecture, into which the weights are loaded (strictly: every name and shape must match).
    """
    folder = os.fspath(folder)
    if not isinstance(ema, bool):
        raise TypeError(f"ema must be a bool, got {type(ema).__name__}")
    run = read_config(folder)
    _, step_folder = _latest(folder)
    weights = _weights(step_folder, "ema" if ema else "model", device)
    if model is None:
        if run.get("model_spec") is None:
            raise ValueError(f"the run in {folder!r} trained a {run.get('model')}, which load_checkpoint cannot "
                             "rebuild; pass model= (a module of the same architecture)")
        model = build_model(run["model_spec"])
    elif not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return with_weights(model, weights, device)


def with_weights(model, weights: dict, device=None):
    """``model`` moved to ``device`` (default CPU) and the weights' dtype, the state dict ``weights`` loaded
    strictly (every name and shape must match), in eval mode."""
    dtype = next(iter(weights.values())).dtype if weights else None
    model = model.to(device=device if device is not None else "cpu", dtype=dtype)
    model.load_state_dict(weights, strict=True)
    return model.eval()


def latest_weights_path(out, which: str = "ema") -> str:
    """The path of the latest committed checkpoint's ``which`` ("ema" or "model") safetensors file."""
    _, folder = _latest(out)
    return os.path.join(folder, f"{which}.safetensors")


# -- resuming ----------------------------------------------------------------------------------------------------
def check_resume(stored: dict, run: dict, out, resumable=()) -> None:
    """Raise ValueError naming what differs between the run stored in ``out`` and ``run`` (the settings named in
    ``resumable``, the versions and ``meta`` may differ)."""
    strip = lambda r: {k: v for k, v in r.items() if k not in ("meta", "versions")}  # noqa: E731
    a, b = strip(stored), strip(json.loads(json.dumps(run)))
    for r in (a, b):
        r["settings"] = {k: v for k, v in r["settings"].items() if k not in resumable}
    if a != b:
        diff = sorted({k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
                      | {f"settings.{k}" for k in a["settings"].keys() | b["settings"].keys()
                         if a["settings"].get(k) != b["settings"].get(k)} - {"settings"})
        raise ValueError(f"out={out!r} holds a run with different {', '.join(diff)}; resume it with the same "
                         f"objective, data, process, model and settings (only {', '.join(resumable) or 'none'} may "
                         "change), or use another folder")


def concat_evals(evals):
    """The evaluations (one Dataset per step) as one Dataset by step, or None."""
    if not evals:
        return None
    import xarray as xr

    return xr.concat(evals, dim="step")


def save_evals(out, evals) -> None:
    """Write the evaluations to out/eval.nc (netCDF, atomically)."""
    from ..variance import save_dataset

    save_dataset(concat_evals(evals), os.path.join(out, "eval.nc"))


def load_evals(out, upto: int) -> list:
    """The evaluations of a resumed run up to its checkpoint step (later ones came after the last checkpoint
    and are recomputed, identically)."""
    path = os.path.join(out, "eval.nc")
    if not os.path.exists(path):
        return []
    import xarray as xr

    with xr.open_dataset(path) as ds:
        ds = ds.load()
    return [ds.sel(step=[s]) for s in ds["step"].values if s <= upto]
