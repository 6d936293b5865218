"""The torch.distributed side of dataset-scale runs: joining the process group, sharing decisions,
balancing parts over ranks, and one progress bar for the whole job.

Runs are launched with ``torchrun`` (one process per CPU slot or GPU, on one node or many); a plain
``python`` run is a job of one process. Nothing here schedules work dynamically: every rank computes
the same plan from the same inputs, so the split is deterministic and the ranks' parts are disjoint.

Decisions recorded here:

- Backend: ``gloo`` without CUDA; with CUDA ``cpu:gloo,cuda:nccl`` and each rank on
  ``cuda:LOCAL_RANK`` (the coordination messages are small CPU objects, so they go through gloo).
- The collective timeout is 24 hours: ranks wait for each other only at the start and at the end,
  and a rank may finish its share long before the slowest one. A crashed rank does not leave the
  others waiting: ``torchrun`` stops the whole job when one process dies.
- Progress: each rank adds the rows it has finished to a counter in the rendezvous store (no
  collective, so ranks never wait for each other); a thread on rank 0 reads the sum twice a second
  and moves the one bar (rows, and rows per second).
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional, Sequence, TypeVar

import torch
import torch.distributed as dist

#: How long a collective may wait for the slowest rank.
COLLECTIVE_TIMEOUT = timedelta(hours=24)
#: Seconds between two updates of rank 0's progress bar.
PROGRESS_INTERVAL = 0.5

T = TypeVar("T")
_CALLS = itertools.count()


@dataclass
class ProcessGroup:
    """This process's place in the job.

    Attributes:
        rank: global rank (0 for a single process).
        world_size: number of processes in the job.
        local_rank: rank on this node (``LOCAL_RANK``).
        device: the device this rank computes on.
        initialized_here: whether :func:`join_process_group` created the process group (and
            :meth:`close` destroys it).
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the rank that checks the output folder, shows progress and reports."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value``, on every rank (any picklable object)."""
        if not self.distributed:
            return value
        holder = [value if self.is_main else None]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]  # type: ignore[return-value]

    def gather(self, value: T) -> list[T]:
        """Every rank's ``value``, by rank, on every rank."""
        if not self.distributed:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, value)
        return gathered

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        """Destroy the process group when this module created it."""
        if self.initialized_here and dist.is_initialized():
            dist.destroy_process_group()
            self.initialized_here = False


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def join_process_group(device: Optional[torch.device | str] = None) -> ProcessGroup:
    """Join the job this process belongs to.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the default process group is initialized from the
    environment unless it already is; a plain process is a job of one.

    Args:
        device: the device to compute on; default ``cuda:LOCAL_RANK`` when CUDA is available,
            otherwise the CPU.
    """
    initialized_here = False
    if dist.is_available() and not dist.is_initialized() and _env_int("WORLD_SIZE", 1) > 1:
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(_env_int("LOCAL_RANK", 0))
        dist.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT)
        initialized_here = True
    if dist.is_available() and dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    else:
        rank, world_size = 0, 1
    local_rank = _env_int("LOCAL_RANK", 0)
    if device is None:
        device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    return ProcessGroup(rank, world_size, local_rank, torch.device(device), initialized_here)


def balance(costs: Sequence[float], world_size: int) -> list[list[int]]:
    """Split items over ranks so that their total costs are close (longest processing time first).

    Deterministic: ties go to the lower item index and the lower rank.

    Args:
        costs: the cost of every item (e.g. the characters of a part's texts).
        world_size: number of ranks.

    Returns:
        Per rank, the indices of its items, ascending.
    """
    shares: list[list[int]] = [[] for _ in range(world_size)]
    loads = [(0.0, rank) for rank in range(world_size)]
    heapq.heapify(loads)
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        load, rank = heapq.heappop(loads)
        shares[rank].append(index)
        heapq.heappush(loads, (load + costs[index], rank))
    return [sorted(share) for share in shares]


class JobProgress:
    """One progress bar on rank 0 for the rows of every rank.

    Use as a context manager on every rank; call :meth:`add` after each finished batch.

    Args:
        group: the job.
        total: rows in the whole job.
        done: rows already done before this run (the bar starts there; the rate counts new rows).
        show: show the bar (rank 0 only in any case).
        description: the bar's label.
    """

    def __init__(
        self, group: ProcessGroup, total: int, done: int = 0, *, show: bool = True, description: str = "DecompX"
    ) -> None:
        self.group = group
        self.total = total
        self.done = done
        self.show = show and group.is_main
        self.description = description
        self._key = f"captum_decompx/progress/{next(_CALLS)}"
        self._store = None
        if group.distributed:
            from torch.distributed import distributed_c10d

            self._store = distributed_c10d._get_default_store()
        self._local = 0
        self._bar: Any = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "JobProgress":
        if self.show:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, initial=self.done, desc=self.description, unit="row", dynamic_ncols=True)
            if self._store is not None:
                self._thread = threading.Thread(target=self._poll, name="captum-decompx-progress", daemon=True)
                self._thread.start()
        return self

    def add(self, rows: int) -> None:
        """This rank finished ``rows`` more rows."""
        self._local += rows
        if self._store is not None:
            self._store.add(self._key, rows)
        elif self._bar is not None:
            self._bar.update(rows)

    def _finished_rows(self) -> int:
        assert self._store is not None
        return int(self._store.add(self._key, 0))

    def _poll(self) -> None:
        while not self._stop.wait(PROGRESS_INTERVAL):
            self._move_to(self.done + self._finished_rows())

    def _move_to(self, position: int) -> None:
        if self._bar is not None and position > self._bar.n:
            self._bar.update(position - self._bar.n)

    def finish(self) -> int:
        """After every rank has finished (a barrier): the rows computed by the whole job in this run."""
        if self._store is None:
            return self._local
        return self._finished_rows()

    def __exit__(self, *exc_info: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._bar is not None:
            if exc_info[0] is None and self._store is not None:
                self._move_to(self.done + self._finished_rows())
            self._bar.close()


__all__ = [
    "COLLECTIVE_TIMEOUT",
    "JobProgress",
    "ProcessGroup",
    "balance",
    "join_process_group",
]
