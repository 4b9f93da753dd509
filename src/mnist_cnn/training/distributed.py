"""The processes of a run: one under plain Python, several under torchrun (DistributedDataParallel, gloo on CPU,
NCCL on GPU). Every collective is a no-op when alone, so the loop reads the same for one process or many."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import MnistCnnError
from .options import OptionError, escape


def device_for(name: str, local_world: int = 1) -> torch.device:
    """The device to train on; under torchrun, each of the node's `local_world` processes needs a GPU of its own."""
    if name == "auto":  # too few GPUs for one each (NCCL refuses to share one): the processes share the CPU
        return torch.device("cuda" if torch.cuda.is_available() and torch.cuda.device_count() >= local_world
                            else "cpu")
    given = "{device} " + escape(name)
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise OptionError(f"{given}: no CUDA device is available here")
        if local_world > torch.cuda.device_count():
            raise OptionError(f"{given}: {local_world} processes on this machine but {torch.cuda.device_count()} "
                              "CUDA device(s); NCCL needs one per process (start fewer, or use {device} cpu)")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise OptionError("{device} must be auto, cpu, cuda or cuda:N, got " + escape(repr(name))) from None
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise OptionError(f"{given}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


@dataclass(frozen=True)
class Processes:
    """This process's place among the run's processes (torchrun's environment variables)."""

    world: int = 1
    rank: int = 0
    local_world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Processes:
        env = os.environ
        return cls(int(env.get("WORLD_SIZE", "1")), int(env.get("RANK", "0")), int(env.get("LOCAL_WORLD_SIZE", "1")),
                   int(env.get("LOCAL_RANK", "0")))

    @property
    def is_main(self) -> bool:
        """Only the main process writes files and prints."""
        return self.rank == 0

    def start(self, device_name: str) -> torch.device:
        """This process's device, with the process group joined when there are several."""
        device = device_for(device_name, self.local_world)
        if self.world == 1:
            return device
        import torch.distributed as dist

        if device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return device

    def agree_on(self, out: Path) -> Path:
        """Rank 0's choice of a path (each rank named the run from its own clock)."""
        if self.world == 1:
            return out
        names = [str(out)]
        torch.distributed.broadcast_object_list(names, src=0)
        return Path(names[0])

    def threads(self, given: int | None) -> int:
        """Every core, divided among this machine's processes, unless given."""
        return given or max(1, (os.cpu_count() or 1) // self.local_world)

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This process's part of a global batch."""
        return batch if self.world == 1 else batch[self.rank::self.world]

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model that trains: DDP averages the processes' gradients."""
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The tensor summed over the processes, in place."""
        if self.world > 1:
            torch.distributed.all_reduce(tensor)
        return tensor

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def steps_per_epoch(self, n: int, batch_size: int, say) -> int:
        """Batches per epoch. A last batch smaller than the number of processes would leave one without images (a
        NaN loss, or batch norm fails on it): it is left out, as a DataLoader's drop_last."""
        if n < self.world:
            raise MnistCnnError(f"{n} training image(s) for {self.world} processes: each process needs at least one")
        steps = -(-n // batch_size)
        if self.world > 1 and 0 < n % batch_size < self.world:
            steps -= 1
            say(f"The last {n % batch_size} image(s) of each epoch's order are left out: a batch smaller than the "
                f"{self.world} processes would leave one of them without images")
        return steps
