"""Data-parallel training across processes, the way PyTorch users already run it::

    torchrun --standalone --nproc-per-node 2 -m canon train lenet5 --data digits ...

torchrun starts the processes and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous
variables; :func:`init_distributed` reads them and joins the process group (gloo on CPU, nccl on
CUDA). Without them training runs in one process and nothing here does anything.

Also here: :class:`SyncBatchNorm2d`, batch-norm statistics over every process's share of the batch
(torch's ``nn.SyncBatchNorm`` runs only on GPUs, so ``--sync-bn`` uses it on CUDA and this one on
CPU), and the fault hook the restart test uses.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = ["DistributedInfo", "init_distributed", "shutdown_distributed", "all_gather_objects", "barrier",
           "SyncBatchNorm2d", "convert_sync_batchnorm", "maybe_inject_fault", "restart_count"]

FAULT_ENV = "CANON_FAULT_AT_STEP"  # "RANK:STEP": that process exits at that optimizer step (first attempt only)


@dataclass(frozen=True)
class DistributedInfo:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def restart_count() -> int:
    """How many times torchrun has restarted this group of processes (0 on the first attempt)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def init_distributed(device: torch.device) -> DistributedInfo:
    """Join the process group torchrun describes in the environment (a no-op without torchrun)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world_size <= 1:
        return DistributedInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            # torchrun shares its rendezvous store with the workers and keeps it across restarts, so a
            # restarted group would read the previous attempt's addresses (pytorch/pytorch#135712):
            # every attempt gets keys of its own.
            store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
                                  is_master=False)
            prefix = f"canon/{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}/attempt-{restart_count()}"
            dist.init_process_group(backend=backend, store=dist.PrefixStore(prefix, store), rank=rank,
                                    world_size=world_size)
        else:
            dist.init_process_group(backend=backend)
    return DistributedInfo(world_size=world_size, rank=rank, local_rank=local_rank, backend=backend)


def shutdown_distributed(info: DistributedInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_gather_objects(info: DistributedInfo, value: Any) -> list[Any]:
    """Every process's ``value``, in rank order (just ``[value]`` in one process)."""
    if not info.enabled:
        return [value]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, value)
    return out


def barrier(info: DistributedInfo) -> None:
    if info.enabled:
        dist.barrier()


def maybe_inject_fault(info: DistributedInfo, step: int) -> None:
    """Test hook: with ``CANON_FAULT_AT_STEP=RANK:STEP`` that process dies (exit code 1, no cleanup,
    like a killed worker) when it reaches optimizer step STEP, on torchrun's first attempt only."""
    spec = os.environ.get(FAULT_ENV)
    if not spec or restart_count() > 0:
        return
    rank, _, at = spec.partition(":")
    if int(rank) == info.rank and int(at) == step:
        import sys

        print(f"canon: {FAULT_ENV}={spec}: rank {info.rank} exits at step {step}", file=sys.stderr, flush=True)
        os._exit(1)


# ----------------------------------------------------------------------------- synchronised batch norm
class _SyncBatchNormFunction(torch.autograd.Function):
    """Batch norm whose batch statistics are sums over every process.

    Forward, with m the total number of values per channel over all processes:
        mean = Σx / m,  var = Σx² / m − mean²,  y = (x − mean) / sqrt(var + eps) · γ + β
    Backward (the usual batch-norm gradient, with its two sums taken over all processes):
        dx = γ / sqrt(var + eps) · (dy − Σdy / m − x̂ · Σ(dy · x̂) / m)
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps, group):
        dims = [0] + list(range(2, x.dim()))
        local = torch.stack([x.sum(dims), (x * x).sum(dims)])  # (2, C)
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        packed = torch.cat([local.flatten(), count])
        dist.all_reduce(packed, group=group)
        channels = x.shape[1]
        total = packed[-1]
        mean = packed[:channels] / total
        var = (packed[channels:2 * channels] / total - mean * mean).clamp_min(0)
        shape = [1, channels] + [1] * (x.dim() - 2)
        inv_std = torch.rsqrt(var + eps)
        x_hat = (x - mean.view(shape)) * inv_std.view(shape)
        ctx.save_for_backward(x_hat, weight, inv_std, total)
        ctx.group = group
        y = x_hat * weight.view(shape) + bias.view(shape) if weight is not None else x_hat
        return y, mean, var, total

    @staticmethod
    def backward(ctx, dy, _mean, _var, _total):
        x_hat, weight, inv_std, total = ctx.saved_tensors
        dims = [0] + list(range(2, dy.dim()))
        channels = dy.shape[1]
        shape = [1, channels] + [1] * (dy.dim() - 2)
        sum_dy_local = dy.sum(dims)
        sum_dy_xhat_local = (dy * x_hat).sum(dims)
        grad_weight = sum_dy_xhat_local if weight is not None else None
        grad_bias = sum_dy_local if weight is not None else None
        packed = torch.cat([sum_dy_local, sum_dy_xhat_local])
        dist.all_reduce(packed, group=ctx.group)
        sum_dy, sum_dy_xhat = packed[:channels], packed[channels:]
        gamma = weight.view(shape) if weight is not None else 1.0
        dx = gamma * inv_std.view(shape) * (dy - sum_dy.view(shape) / total
                                            - x_hat * sum_dy_xhat.view(shape) / total)
        # dy is the gradient of this process's own loss, so these are the gradients of the sum of
        # every process's loss; γ and β get this process's share, and DDP's average over processes
        # (like the engine's, for tasks it does not wrap) turns both into the gradient of the mean.
        return dx, grad_weight, grad_bias, None, None


class SyncBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training statistics cover the whole batch of every process (CPU and GPU).

    Same parameters and buffers as ``nn.BatchNorm2d`` (so checkpoints are interchangeable);
    running statistics use the unbiased variance over all processes' values, as batch norm does.
    Outside training, or in a single process, it is exactly ``nn.BatchNorm2d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        if x.dim() != 4:
            raise ValueError(f"SyncBatchNorm2d expects (N, C, H, W), got {tuple(x.shape)}")
        y, mean, var, total = _SyncBatchNormFunction.apply(x, self.weight, self.bias, self.eps, dist.group.WORLD)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * total / (total - 1).clamp_min(1)
                self.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
                self.running_var.mul_(1 - momentum).add_(unbiased.detach(), alpha=momentum)
        return y


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` by a synchronised one: torch's on CUDA, canon's on CPU."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert(module)


def _convert(module: nn.Module) -> nn.Module:
    if type(module) is nn.BatchNorm2d:
        new = SyncBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, _convert(child))
    return module

