"""Data-parallel behavior-model fitting under ``torchrun``: which process this is, the process group
and the few messages rank 0 sends the other ranks.

``torchrun --nproc-per-node N -m recrl.cli train ...`` starts ``N`` processes (``WORLD_SIZE``,
``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT`` in their environment). Rank 0, the
leader, runs the whole pipeline and writes everything (run folder, caches). Ranks > 0, the
followers, never enter Hydra: they wait for rank 0 to send a behavior model to fit
(:func:`recrl.behavior.fit.serve_fits`), fit their share of each mini-batch with
DistributedDataParallel, and exit when rank 0 releases them (:func:`release`, once the run's
behavior models are fitted). They write nothing.

One process group serves both kinds of traffic: ``gloo`` on CPU-only machines, ``cpu:gloo,cuda:nccl``
with CUDA (gradients of a model on the GPU go through NCCL, the small control messages, which
are CPU objects, through gloo).

Example (on every rank)::

    if distributed.is_main():
        model.fit(interactions)      # fit_sequence_model leads the fit on all ranks
        distributed.release()
    else:
        serve_fits()                 # until rank 0 releases this rank
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

# How long a rank waits for the others (rendezvous, a message, a collective). Generous: followers
# wait while rank 0 loads and prepares the data; torchrun stops every rank as soon as one fails.
TIMEOUT = timedelta(hours=6)

_released = False  # rank 0 sent its last message (or, on a follower, received it)


def world_size() -> int:
    """Number of processes of the job (``WORLD_SIZE``; 1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process' rank (``RANK``; 0 without torchrun)."""
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """This process' rank on its machine (``LOCAL_RANK``): the GPU it uses."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_distributed() -> bool:
    """Whether this process is one of several started by torchrun."""
    return world_size() > 1


def is_main() -> bool:
    """Whether this process is rank 0 (always true without torchrun): the one that writes."""
    return rank() == 0


def active() -> bool:
    """Whether behavior fits are data-parallel now: under torchrun, until rank 0 released the others."""
    return is_distributed() and not _released


def backend() -> str:
    """The process group's backend: gloo, plus NCCL for CUDA tensors where CUDA is available."""
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


def init_once() -> None:
    """Join the process group (``env://``, from torchrun's variables) unless already done."""
    if not dist.is_initialized():
        dist.init_process_group(backend(), timeout=TIMEOUT)


def local_device(kind: str) -> torch.device:
    """This rank's device of the kind rank 0 fits on: its own GPU (``LOCAL_RANK``) or the CPU."""
    return torch.device("cuda", local_rank()) if kind == "cuda" else torch.device("cpu")


def send(message: Any) -> None:
    """Rank 0: send a picklable ``message`` to every other rank (over gloo)."""
    dist.broadcast_object_list([message], src=0, device=torch.device("cpu"))


def receive() -> Any:
    """Ranks > 0: the next message of rank 0."""
    box: list[Any] = [None]
    dist.broadcast_object_list(box, src=0, device=torch.device("cpu"))
    return box[0]


def agree(flag: bool) -> bool:
    """Rank 0's ``flag`` on every rank (``flag`` itself outside a data-parallel fit): how all ranks
    stop at the same epoch."""
    if not active():
        return flag
    if is_main():
        send(flag)
        return flag
    return bool(receive())


def barrier() -> None:
    """Wait until every rank gets here (a CPU all-reduce, so over gloo whatever the model's device)."""
    dist.all_reduce(torch.zeros(1))


def mean_over_ranks(value: Tensor) -> float:
    """The mean of a scalar tensor over the ranks (``value`` itself outside a data-parallel fit)."""
    if not active():
        return float(value)
    total = value.detach().clone()
    dist.all_reduce(total)
    return float(total) / world_size()


def data_parallel(module: nn.Module, device: torch.device) -> DistributedDataParallel:
    """``module`` (on ``device``) wrapped so that backward passes average its gradients over the
    ranks. Parameters a step leaves unused (a signal head without data, the softmax head on a
    shard without clicks) are allowed; buffers are not re-broadcast every step (fitting never
    changes them, and every rank starts from rank 0's model)."""
    init_once()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None,
                                   find_unused_parameters=True, forward_sync_buffers=False)


def _close() -> None:
    global _released
    barrier()  # every rank has its last message before the group goes
    _released = True
    dist.destroy_process_group()


def release() -> None:
    """Rank 0: tell the other ranks that no more fits come, so they exit; later fits in this process
    run on rank 0 alone. Nothing on other ranks, without torchrun, or once done."""
    if not (active() and is_main()):
        return
    init_once()
    send(None)
    _close()


def released() -> None:
    """Ranks > 0: rank 0 sent its last message (:func:`release`); leave the process group."""
    _close()
