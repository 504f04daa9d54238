"""Single-process, multi-GPU and multi-node (torchrun) helpers."""
import os

import torch
import torch.distributed as dist


def init_distributed(device_type):
    """Join the process group when launched by torchrun; returns `(rank, world_size, local_rank)`."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1, 0
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo", rank=rank, world_size=world_size)
    return rank, world_size, local_rank


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def rank():
    """This process's rank (0 in a single process)."""
    return dist.get_rank() if is_distributed() else 0


def world_size():
    """The number of processes of the run (1 in a single process)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main_process():
    return rank() == 0


def all_reduce_sum(tensor):
    """Sum a tensor over all ranks (in place); a no-op in a single process."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj):
    """Rank 0's `obj` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj):
    """List of every rank's `obj` (rank order); `[obj]` in a single process."""
    if not is_distributed():
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def cleanup():
    if is_distributed():
        dist.destroy_process_group()


def ranks_in_sync(module):
    """True when every rank holds the same parameters (per-tensor sums compared across ranks)."""
    if not is_distributed():
        return True
    sums = torch.stack([p.detach().double().sum() for p in module.parameters()])
    high, low = sums.clone(), -sums
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MAX)
    return bool(torch.equal(high, -low))
