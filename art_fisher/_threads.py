"""Torch's CPU threads against the cores that are free: a warning where long CPU work starts."""

from __future__ import annotations

import logging
import os

import torch

logger = logging.getLogger("art_fisher")

#: (threads, free cores) pairs already warned about in this process: one warning each, not one per call.
_warned: set[tuple[int, int]] = set()


def free_cores() -> int:
    """The CPU cores this process may use that other processes are not keeping busy (at least 1).

    The cores are those of the process's CPU affinity (``os.sched_getaffinity``, else ``os.cpu_count()``);
    the busy ones are the one-minute load average, rounded.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call
        cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows
        load = 0.0
    return max(1, cores - round(load))


def check_threads(work: str = "this run") -> int:
    """Warn (once per process and setting) when torch would use more CPU threads than there are free cores.

    torch's intra-op pool defaults to one thread per physical core; when other processes keep some of
    those cores busy, its threads wait on each other and small models train several times slower than
    with one thread. Call ``torch.set_num_threads(n)`` (or set ``OMP_NUM_THREADS=n`` before starting
    Python) with ``n`` at most ``free_cores`` before long CPU work.

    Parameters
    ----------
    work : str
        What is about to run, for the message.

    Returns
    -------
    int
        ``torch.get_num_threads()``.

    Examples
    --------
    >>> import torch
    >>> from art_fisher import check_threads
    >>> torch.set_num_threads(1)
    >>> check_threads("a small training run")
    1
    """
    threads = torch.get_num_threads()
    free = free_cores()
    if threads > free and (threads, free) not in _warned:
        _warned.add((threads, free))
        logger.warning(
            "torch will use %d CPU threads but only %d core(s) are free: %s may run several times slower than "
            "with torch.set_num_threads(%d) (or OMP_NUM_THREADS=%d) set before it starts.",
            threads, free, work, free, free,
        )  # fmt: skip
    return threads
