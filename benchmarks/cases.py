"""Side-by-side speed cases (issue 12, part 2): scoremc against what a user would write instead.

Each builder returns a :class:`Case`: a dict of contenders (name -> zero-argument callable), the one
whose time every other is divided by (``reference``), the dominant flop count, and a check that every
contender computes the same thing. The same cases are driven two ways:

* ``bench_side_by_side.py`` (the recorded numbers): contenders alternate, call by call, repeated; medians
  and ratios, so that a change of load on a shared machine hits all of them alike;
* ``test_harness.py`` (pytest-benchmark, one group per case): ``pytest benchmarks/test_harness.py``
  for the harness's statistics, histograms and ``--benchmark-compare`` across commits.

Sizes: ``full`` is the issue's; ``quick`` is CI-sized (tests/test_benchmarks.py runs every case once).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

import scoremc as smc

SEED = 20240601

SIZES = {
    "full": {"gmm": dict(N=100_000, K=16, d=64), "emp": dict(N=1000, K=4096, d=3072),
             "stf": dict(B=16, d=3072, ns=(256, 1024, 4096)),
             "train": dict(B=128, d=3072, n_ref=4096, K=4096, hidden=1024, depth=3),
             "train_fp": dict(B=128, d=64, K=4096, hidden=512, depth=3)},
    "quick": {"gmm": dict(N=500, K=4, d=8), "emp": dict(N=16, K=64, d=32),
              "stf": dict(B=4, d=64, ns=(32,)),
              "train": dict(B=16, d=16, n_ref=64, K=64, hidden=32, depth=2),
              "train_fp": dict(B=16, d=8, K=64, hidden=32, depth=2)},
}


@dataclass
class Case:
    name: str
    contenders: dict[str, Callable]
    reference: str = "scoremc"
    flops: float | None = None
    params: dict = field(default_factory=dict)
    check: Callable | None = None  # () -> {contender: max relative difference to the reference}
    notes: str = ""


def _rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.linalg.norm(a - b, axis=-1) / np.maximum(np.linalg.norm(b, axis=-1), 1e-300)))


def _np(v):
    return v.detach().numpy() if hasattr(v, "detach") else np.asarray(v)


# ----------------------------------------------------------------------------- exact GMM score

def gmm_case(size="full") -> Case:
    """Exact score of a full-covariance GMM: scoremc vs torch MixtureSameFamily + autograd vs SciPy."""
    import torch
    from bench_exact_score import baseline_gmm_score, make_gmm
    from torch import distributions as D

    p = SIZES[size]["gmm"]
    gm, x = make_gmm(p["N"], p["K"], p["d"], seed=SEED)

    def torch_score(dtype):
        w, mu, cov = (torch.tensor(np.array(v), dtype=dtype) for v in (gm.weights, gm.means, gm.covs))
        mix = D.MixtureSameFamily(D.Categorical(probs=w), D.MultivariateNormal(mu, covariance_matrix=cov))
        xt0 = torch.as_tensor(x, dtype=dtype)

        def f():  # what a torch user writes: log_prob, then autograd for the score
            xt = xt0.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(mix.log_prob(xt).sum(), xt)
            return g
        return f

    contenders = {
        "scoremc": lambda: smc.score(gm, x),
        "torch-f64": torch_score(torch.float64),
        "torch-f32": torch_score(torch.float32),
        "scipy": lambda: baseline_gmm_score(gm, x),
    }

    def check():
        ref = contenders["scoremc"]()
        return {k: _rel(_np(f()), ref) for k, f in contenders.items() if k != "scoremc"}

    N, K, d = p["N"], p["K"], p["d"]
    return Case("gmm-score", contenders, flops=2.0 * N * K * d * d, params=p, check=check,
                notes="flops: 2 N K d^2 (one (x - m_k) P_k GEMM per component)")


# ----------------------------------------------------------------------------- exact Empirical score

def empirical_case(size="full") -> Case:
    """Exact score of a noised Empirical target: scoremc vs torch cdist + softmax (STF-style code)."""
    import torch
    from bench_exact_score import make_empirical

    p = SIZES[size]["emp"]
    emp, mt, x, alpha, sigma = make_empirical(p["N"], p["K"], p["d"], seed=SEED)
    P = emp.points

    def torch_score(dtype):
        xt, Pt = torch.tensor(np.array(x), dtype=dtype), torch.tensor(np.array(P), dtype=dtype)

        def f():
            aP = alpha * Pt
            r = torch.softmax(-torch.cdist(xt, aP).square() / (2 * sigma ** 2), dim=1)
            return (r @ aP - xt) / sigma ** 2
        return f

    # the GEMM bound: the two products scoremc cannot avoid, x @ P^T and r @ P, float64, same shapes
    W = np.random.default_rng(0).random((p["N"], p["K"]))
    contenders = {
        "scoremc": lambda: smc.score(mt, x),
        "torch-f64": torch_score(torch.float64),
        "torch-f32": torch_score(torch.float32),
        "gemm-bound-f64": lambda: (x @ P.T, W @ P),
    }

    def check():
        ref = contenders["scoremc"]()
        return {k: _rel(contenders[k]().numpy(), ref) for k in ("torch-f64", "torch-f32")}

    N, K, d = p["N"], p["K"], p["d"]
    return Case("empirical-score", contenders, flops=4.0 * N * K * d, params=p, check=check,
                notes="flops: 4 N K d (x P^T and r P); gemm-bound-f64 runs exactly those two float64 GEMMs")


# ----------------------------------------------------------------------------- STF target

def stf_broadcast(xt, sigma, ref, alpha=1.0):
    """The official STF code's formulation (Xu et al. 2023, reimplemented from the issue's description):
    the (B, n, d) difference tensor, max-subtracted exp of the logits, weights times the repeated
    references, summed over n."""
    import torch

    B = xt.shape[0]
    refs = (alpha * ref).unsqueeze(0).repeat(B, 1, 1)  # (B, n, d) repeated references
    diff = xt.unsqueeze(1) - refs  # (B, n, d)
    logits = -(diff ** 2).sum(-1) / (2 * sigma ** 2)  # (B, n); sigma (B, 1)
    w = torch.exp(logits - logits.max(dim=1, keepdim=True).values)
    w = w / w.sum(dim=1, keepdim=True)
    return ((w.unsqueeze(-1) * refs).sum(1) - xt) / sigma ** 2


def stf_inputs(B, n, d, seed=SEED):
    """float32 torch inputs: references uniform in [-1, 1]^d (images), sigma log-spaced over EDM's range,
    x_t noised from random references."""
    import torch

    rng = np.random.default_rng(seed)
    ref = rng.uniform(-1, 1, (n, d)).astype(np.float32)
    sigma = np.geomspace(0.002, 80, B).astype(np.float32)[:, None]
    xt = (ref[rng.integers(0, n, B)] + sigma * rng.standard_normal((B, d))).astype(np.float32)
    return tuple(torch.from_numpy(v) for v in (xt, sigma, ref))


def stf_cases(size="full") -> list[Case]:
    import torch

    p = SIZES[size]["stf"]
    out = []
    for n in p["ns"]:
        xt, sigma, ref = stf_inputs(p["B"], n, p["d"])

        def streamed(xt=xt, sigma=sigma, ref=ref):
            with torch.no_grad():
                return smc.stf_target(xt, sigma, ref)

        def broadcast(xt=xt, sigma=sigma, ref=ref):
            with torch.no_grad():
                return stf_broadcast(xt, sigma, ref)

        def check(streamed=streamed, broadcast=broadcast, xt=xt, sigma=sigma, ref=ref):
            exact = smc.stf_target(xt.double(), sigma.double(), ref.double()).numpy()
            return {"scoremc": _rel(streamed().numpy(), exact), "broadcast": _rel(broadcast().numpy(), exact)}

        out.append(Case(f"stf-target-n{n}", {"scoremc": streamed, "broadcast": broadcast},
                        flops=4.0 * p["B"] * n * p["d"], params=dict(B=p["B"], n=n, d=p["d"]), check=check,
                        notes="float32; check: max relative error of each against the float64 target"))
    return out


# ----------------------------------------------------------------------------- training steps

def _train_setup(p, objectives):
    import torch

    from scoremc.nn.models import Preconditioned, ScoreMLP

    B, d = p["B"], p["d"]
    rng = np.random.default_rng(SEED)
    emp = smc.Empirical(rng.uniform(-1, 1, (p["K"], d)))
    proc = smc.EDM()
    torch.manual_seed(0)
    model = Preconditioned(ScoreMLP(d, hidden=p["hidden"], depth=p["depth"]), proc)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    pts = torch.tensor(np.array(emp.points), dtype=torch.float32)
    x0 = pts[:B]
    eps = torch.randn(B, d, generator=g)
    t = torch.exp(torch.randn(B, generator=g) * 1.2 - 1.2).clamp(0.002, 80.0)  # EDM's log-normal sigmas
    ref = pts[: max(p.get("n_ref", 0), B)]  # STF Algorithm 1: the minibatch inside the reference batch

    def step(obj):
        def f():
            opt.zero_grad(set_to_none=True)
            kw = {"ref": ref} if isinstance(obj, smc.STFLoss) else {}
            loss = smc.loss(obj, model, emp, proc, t, x0, eps, rng=g, **kw).mean()
            loss.backward()
            opt.step()
            return loss.item()
        return f

    contenders = {name: step(obj) for name, obj in objectives.items()}
    return contenders, (x0, eps, t, ref, proc)


def train_cases(size="full") -> list[Case]:
    """One optimiser step (forward, backward, Adam) of the same network and batch per objective.

    * ``train-step-stf``: DSM vs STFLoss(n_ref) at image size (d = 3072; reference batch = the minibatch
      plus n_ref - B data points, STF Algorithm 1), and the STF target alone (no grad) for scale;
    * ``train-step-fp``: DSM vs FPRegularized (FP-Diffusion's synthetic recipe, Hutchinson(1) divergence,
      the paper's M = 1) at synthetic size (d = 64): its cost grows with d (see README), and at d = 3072,
      B = 128 it exceeded the 23 GB of the benchmark machine.
    """
    import torch

    p = SIZES[size]["train"]
    n_ref = p["n_ref"]
    contenders, (x0, eps, t, ref, proc) = _train_setup(p, {"DSM": smc.DSM(), f"STF(n_ref={n_ref})": smc.STFLoss(n_ref)})
    xt = x0 + t[:, None] * eps
    sig = t[:, None]

    def target_only():
        with torch.no_grad():
            return smc.stf_target(xt, sig, ref)

    contenders["STF target alone"] = target_only
    stf = Case("train-step-stf", contenders, reference="DSM", params=p,
               notes="float32 Preconditioned(ScoreMLP) under EDM; ratios are step time / DSM step time")
    q = SIZES[size]["train_fp"]
    fp_objective = smc.FPRegularized(derivatives=smc.Hutchinson(1))
    contenders, _ = _train_setup(q, {"DSM": smc.DSM(), "FP-regularised": fp_objective})
    fp = Case("train-step-fp", contenders, reference="DSM", params=q,
              notes="float32 Preconditioned(ScoreMLP) under EDM; FPRegularized(derivatives=Hutchinson(1))")
    return [stf, fp]


def all_cases(size="full") -> list[Case]:
    return [gmm_case(size), empirical_case(size), *stf_cases(size), *train_cases(size)]
