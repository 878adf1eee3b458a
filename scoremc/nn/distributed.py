"""What :func:`scoremc.nn.train.train` needs of ``torch.distributed`` (DDP, launched by torchrun): the world, the
STF reference batch all-gathered in rank (= shard) order, and scalars averaged over the ranks."""
from __future__ import annotations

import torch

__all__ = ["gather_dicts", "gather_reference", "mean_over_ranks", "world_and_rank"]


def world_and_rank() -> tuple[int, int]:
    """(world size, rank) under an initialised torch.distributed process group, else (1, 0)."""
    d = torch.distributed
    if d.is_available() and d.is_initialized():
        return d.get_world_size(), d.get_rank()
    return 1, 0


def gather_reference(parts, world: int):
    """The shared STF reference batch: this rank's parts concatenated, all-gathered in rank (= shard) order (parts of
    unequal length are padded for the collective, then trimmed)."""
    if parts[0] is None:
        return None
    local = torch.cat(parts)
    if world == 1:
        return local
    sizes = [torch.zeros((), dtype=torch.int64, device=local.device) for _ in range(world)]
    torch.distributed.all_gather(sizes, torch.tensor(len(local), device=local.device))
    sizes_by_rank = [int(n) for n in sizes]
    width = max(sizes_by_rank)
    padded = torch.zeros((width,) + tuple(local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[:len(local)] = local
    bufs = [torch.empty_like(padded) for _ in range(world)]
    torch.distributed.all_gather(bufs, padded)
    return torch.cat([b[:n] for b, n in zip(bufs, sizes_by_rank)])


def mean_over_ranks(value: torch.Tensor, world: int) -> float:
    """The mean of a scalar tensor over the ranks (all-reduced), as a float."""
    if world > 1:
        value = value.clone()
        torch.distributed.all_reduce(value)
        value /= world
    return float(value)


def gather_dicts(part: dict, world: int) -> dict:
    """The union of every rank's dict (e.g. each shard's generator state by shard index), on every rank."""
    if world == 1:
        return part
    gathered = [None] * world
    torch.distributed.all_gather_object(gathered, part)
    return {k: v for rank_part in gathered for k, v in rank_part.items()}
