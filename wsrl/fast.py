"""The fast path around an agent's ``update``: CPU settings, ``torch.compile``, CUDA graphs.

``make_update`` is what the training loops call; it returns a drop-in replacement for
``agent.update`` that computes the same thing (tests/test_fast.py checks each wrapper against the
plain call). The update itself is already written for speed (stacked ensemble, fused Adam, only
the chosen target critics evaluated, no host synchronisation); this module adds what depends on
the device and the run configuration.
"""

from __future__ import annotations

import ctypes
import functools
import os
import warnings
from typing import Callable

import torch

from wsrl.agents.release_update import update_for
from wsrl.config import RunConfig

Batch = dict[str, torch.Tensor]
Update = Callable[[Batch], dict[str, torch.Tensor]]


def auto_threads() -> int:
    """Cores this process may use, minus those other processes keep busy (1-min load average).

    An OpenMP team that shares a core with another busy process waits on it at every barrier:
    on a 2-core machine with one background job, 2 threads ran the WSRL update ~5x slower than 1.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        busy = int(os.getloadavg()[0] + 0.5)
    except OSError:
        busy = 0
    return max(1, cores - busy)


def configure_cpu(threads: int = 0) -> int:
    """Thread count (0 keeps torch's default, one per physical core) and allocator settings for
    CPU training; returns the threads. The default is fixed rather than load-dependent so that
    a run, its resumption and its rerun use the same thread count (bit-identical results); on a
    machine shared with other busy processes pass ``--threads`` (``auto_threads`` suggests one)."""
    if threads > 0:
        torch.set_num_threads(threads)
    _keep_freed_memory()
    return torch.get_num_threads()


def _keep_freed_memory() -> None:
    """Stop glibc from returning large blocks to the OS after every free.

    PyTorch's CPU allocator does not cache; glibc serves blocks above 32 MB (e.g. the CQL
    activations, [10, 7680, 256] floats) with mmap and unmaps them on free, so every such
    tensor is page-faulted in again on every step. Measured: the CQL critic forward+backward
    ran ~2x faster with mmap off and trimming raised. No effect (and no error) off glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_max = -1, -4
    libc.mallopt(m_mmap_max, 0)
    libc.mallopt(m_trim_threshold, 1 << 30)


class StaticUpdate:
    """Runs ``update`` on fixed input tensors that each call's batch is copied into.

    This is what CUDA graph replay needs (a graph reads the same addresses every time), kept
    separate so that the copy-in logic is testable eagerly on CPU (``capture=False``). With
    ``capture=True`` (CUDA only) the first ``warmup`` calls run eagerly on a side stream (real
    updates, which also create the optimizer state and autograd buffers), the next call captures
    the whole update into one graph, and every call from then on replays it. The returned
    metrics are the graph's output tensors, overwritten by the next replay.
    """

    def __init__(self, update: Update, capture: bool, warmup: int = 3):
        self.update, self.capture, self.warmup = update, capture, warmup
        self.static_batch: Batch | None = None
        self.graph = None
        self.static_metrics: dict[str, torch.Tensor] | None = None
        self.calls = 0

    def _copy_in(self, batch: Batch) -> Batch:
        if self.static_batch is None:
            self.static_batch = {k: v.clone() for k, v in batch.items()}
        else:
            if batch.keys() != self.static_batch.keys() or any(
                    v.shape != self.static_batch[k].shape for k, v in batch.items()):
                raise ValueError("StaticUpdate: batch keys and shapes must stay the same between calls")
            for k, v in batch.items():
                self.static_batch[k].copy_(v)
        return self.static_batch

    def __call__(self, batch: Batch) -> dict[str, torch.Tensor]:
        static = self._copy_in(batch)
        self.calls += 1
        if not self.capture:
            return self.update(static)
        if self.graph is not None:
            self.graph.replay()
            return self.static_metrics
        if self.calls <= self.warmup:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                metrics = self.update(static)
            torch.cuda.current_stream().wait_stream(side)
            return metrics
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.static_metrics = self.update(static)
        except Exception as err:  # noqa: BLE001 - any capture failure means: run eagerly from now on
            warnings.warn(f"wsrl: CUDA graph capture of the update failed ({err}); running it eagerly", stacklevel=2)
            self.capture = False
            return self.update(static)
        self.graph = graph
        graph.replay()  # capturing records the kernels but does not run them
        return self.static_metrics


def make_capturable(agent) -> None:
    """Adam may only be stepped inside a CUDA graph when its step counters live on the device."""
    for opt in agent.optimizers.values():
        for group in opt.param_groups:
            group["capturable"] = True
        for state in opt.state.values():
            if "step" in state and torch.is_tensor(state["step"]):
                device = next(p.device for g in opt.param_groups for p in g["params"])
                state["step"] = state["step"].to(device=device, dtype=torch.float32)


def make_update(agent, cfg: RunConfig, device: torch.device, behavior_cloning: bool = False,
                train_actor: bool = True) -> Update:
    """``agent.update`` with this run's fast-path settings: CPU threads and allocator, optional
    ``torch.compile`` (``--compile``), and on CUDA the whole update as one CUDA graph
    (``--cuda-graph``, the default there). ``behavior_cloning`` selects the BC actor step,
    ``train_actor=False`` the update without an actor step (a graph replays one fixed sequence of
    kernels, so each kind of update gets its own)."""
    update: Update = update_for(agent)  # the agent's own, or the release's (--release-exact)
    if behavior_cloning or not train_actor:
        update = functools.partial(update, behavior_cloning=behavior_cloning, train_actor=train_actor)
    if device.type == "cpu":
        configure_cpu(cfg.threads)
    if cfg.compile:
        update = torch.compile(update)
    if device.type == "cuda" and cfg.cuda_graph:
        make_capturable(agent)
        update = StaticUpdate(update, capture=True)
    return update
