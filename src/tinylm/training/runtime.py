"""Where a process runs: its device, precision, place in a distributed job, random streams and stop signals.

The training loop (:mod:`.trainer`), the LR finder and inference loading ask this module which device
and precision to use; under ``torchrun`` it joins the process group (gloo on CPU, nccl on GPU) and
does the few collective operations the loop needs. Nothing here runs at import time.
"""
from __future__ import annotations

import contextlib
import gc
import os
import random
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..errors import TinyLMError
from ..model.fp8 import check_fp8

# --------------------------------------------------------------------------- device and precision


def resolve_device(name: str, local_rank: int = 0, flag: str = "--train.device") -> torch.device:
    """auto -> this process's CUDA device, else MPS, else the CPU; ``flag`` is the option named in errors.

    A CUDA device always comes back with its index (``cuda`` -> ``cuda:<local_rank>``), so what a run
    records (:func:`device_name`) has one format: ``resolve_device("cuda") -> device("cuda", 0)``.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TinyLMError(f"{flag} {name}: no CUDA device is available; use {flag} cpu")
    device = torch.device(name)
    return torch.device("cuda", local_rank) if device.type == "cuda" and device.index is None else device


def device_memory(device: torch.device) -> int | None:
    """Bytes of memory the device has: a GPU's own, the machine's RAM for the CPU; None when unknown (MPS)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "cpu":
        try:
            return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):  # no sysconf (Windows) or no such name
            return None
    return None


def device_name(device: torch.device) -> str:
    """What a run trained on, for its checkpoints and report, in one format: ``"<type>[:<index>]"``, and on
    CUDA the GPU's name: ``"cuda:0 (NVIDIA H100 80GB HBM3)"``, ``"cpu"``, ``"mps"``."""
    if device.type != "cuda":
        return str(device)
    index = torch.cuda.current_device() if device.index is None else device.index
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"


def cpu_has_fast_bf16() -> bool:
    """True when the CPU multiplies bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated
    and several times slower than fp32 (BENCHMARKS.md, "CPU precision").

    ``TINYLM_CPU_BF16=1`` or ``0`` overrides the detection (what `auto` picks), e.g. to try on one
    machine what another kind of CPU would do.
    """
    forced = os.environ.get("TINYLM_CPU_BF16", "")
    if forced in ("0", "1"):
        return forced == "1"
    if forced:
        raise TinyLMError(f"TINYLM_CPU_BF16={forced!r}: use 1 (treat this CPU as having native bf16), "
                          f"0 (as not having it), or unset it to detect")
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, p, lambda: False)() for p in probes)


def resolve_precision(name: str, device: torch.device) -> str:
    """auto -> bf16 where the hardware is fast at it, else fp32. fp16 needs CUDA."""
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if device.type == "cpu" and cpu_has_fast_bf16() else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise TinyLMError("--train.precision fp16 needs CUDA (it relies on a gradient scaler and fast "
                          "fp16 kernels); on this device use bf16 or fp32")
    if name == "fp8":
        check_fp8(device)
    return name


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype autocast runs in at ``precision`` (fp32 | bf16 | fp16 | fp8: bf16 beside its FP8 layers)."""
    return {"bf16": torch.bfloat16, "fp8": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def enable_tf32(device: torch.device) -> bool:
    """On CUDA, let fp32 matmuls use TF32 tensor cores; elsewhere leave every setting alone. True when set.

    TF32 keeps fp32's range with a 10-bit mantissa: several times the fp32 matmul speed on Ampere and
    later, and the rounding is far below bf16's, which autocast already accepts. (``set_float32_matmul_precision``
    rather than the per-backend flags: torch.compile reads it, and mixing the two APIs is refused by torch.)
    """
    if device.type != "cuda":
        return False
    torch.set_float32_matmul_precision("high")  # process-wide; cuDNN convolutions already allow TF32 by default
    return True


def check_compiler(device: torch.device, flag: str) -> None:
    """torch.compile on a CPU builds C++ kernels: without a working compiler it fails at the first step from
    deep inside torch. Say so now, in one line (``flag``: the option that asked for compiling)."""
    if device.type != "cpu":
        return
    try:  # inductor's own search ($CXX, then g++); a private function, so only where this torch has it
        from torch._inductor.cpp_builder import get_cpp_compiler
    except ImportError:
        return
    try:
        get_cpp_compiler()
    except RuntimeError as e:  # torch._inductor.exc.InvalidCxxCompiler
        raise TinyLMError(f"{flag} true needs a C++ compiler on the CPU (torch.compile builds C++ kernels) and none "
                          f"works here (torch looks for $CXX, else g++): install one (e.g. apt install g++) or pass "
                          f"{flag} false") from e


def autocast_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass: weights stay fp32, matmuls run in ``precision``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=compute_dtype(precision))


# --------------------------------------------------------------------------- distributed

@dataclass
class Dist:
    """This process's place in the job: one process is ``Dist()`` (rank 0 of 1)."""
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    host_group: Any = None  # where the host's small agreements go (gloo); None: the default group, gloo already

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> Dist:
    """Join the process group when launched by torchrun (RANK/WORLD_SIZE set), else single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (device_name == "auto" or device_name.startswith("cuda"))
    if use_cuda:
        check_gpu_count(int(os.environ.get("LOCAL_WORLD_SIZE", local_rank + 1)), torch.cuda.device_count())
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    # beside nccl, a gloo group for the per-step agreement (clock, stop): a CPU all-reduce that does not wait for
    # the GPU's queue, as one on a CUDA tensor would
    return Dist(rank, local_rank, world, dist.new_group(backend="gloo") if use_cuda else None)


def check_gpu_count(local_processes: int, gpus: int) -> None:
    """One GPU per process: more processes on this machine than GPUs is refused in one line, by every
    process (none is left waiting for the others), before any touches CUDA (``torch.cuda.set_device``
    would kill the extra ones with "invalid device ordinal" and a page of traceback)."""
    if local_processes > gpus:
        raise TinyLMError(f"{local_processes} processes on this machine but {gpus} GPU(s): tinylm runs one process "
                          f"per GPU; start at most {gpus} (torchrun --nproc_per_node {gpus}), or train on the CPU "
                          f"over gloo with --train.device cpu")


def shutdown_distributed(*, finished: bool = False) -> None:
    """Leave the process group. After a run that ``finished`` on every process, first wait for all
    of them: a process that tears down its gloo threads while its last message to another is still
    in flight is aborted by C++ ("terminate called without an active exception", seen under load).
    After an error there is no waiting: the others may never arrive. The run's cyclic garbage (FSDP's
    module state, which holds the group) is collected first, so the group dies here and not during the
    interpreter's exit, where gloo's threads abort the process the same way."""
    if dist.is_initialized():
        if finished:
            dist.barrier()
        gc.collect()
        dist.destroy_process_group()


def all_mean(x: torch.Tensor, d: Dist) -> torch.Tensor:
    """``x`` averaged over every process, in place (every process must call it)."""
    if d.world_size > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= d.world_size
    return x


def all_sum(x: torch.Tensor, d: Dist) -> torch.Tensor:
    """``x`` summed over every process, in place (every process must call it)."""
    if d.world_size > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def main_clock_and_any_stop(clock: float, stop: bool, d: Dist) -> tuple[float, bool]:
    """Rank 0's ``clock``, and whether any process's ``stop`` is set, in every process: one all-reduce of two
    numbers on the host (every process must call it). Process 1's ``(5.0, True)`` with rank 0's ``(4.0, False)``
    -> ``(4.0, True)`` in both."""
    if d.world_size == 1:
        return clock, stop
    box = torch.tensor([clock if d.is_main else 0.0, float(stop)], dtype=torch.float64)  # a sum: rank 0's clock
    dist.all_reduce(box, op=dist.ReduceOp.SUM, group=d.host_group)
    return float(box[0]), bool(box[1] > 0)


def on_main(fn: Callable[[], Any], d: Dist) -> Any:
    """``fn()`` run by rank 0 alone (the others wait), its result (picklable) in every process. When it fails, every
    process fails with its message: the others, left waiting, would die of the broken connection with a traceback
    once rank 0 left (e.g. a second job on a locked run folder)."""
    if d.world_size == 1:
        return fn()
    result = error = None
    if d.is_main:
        try:
            result = fn()
        except Exception as e:
            error = e
    message = None if error is None else str(error) if isinstance(error, TinyLMError) else \
        f"process 0 failed ({type(error).__name__}: {error}); its own message says more"
    result, message = broadcast_from_main((result, message), d)
    if error is not None:
        raise error
    if message is not None:
        raise TinyLMError(message)
    return result


def broadcast_from_main(obj: Any, d: Dist) -> Any:
    """Rank 0's ``obj`` (picklable), in every process."""
    if d.world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_to_main(obj: Any, d: Dist) -> list | None:
    """Every process's ``obj``, in rank order, on rank 0; None in the other processes."""
    if d.world_size == 1:
        return [obj]
    gathered = [None] * d.world_size if d.is_main else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def wrap_distributed(model: torch.nn.Module, d: Dist, device: torch.device, *, fsdp: bool) -> torch.nn.Module:
    """DDP (gradients all-reduced) or FSDP2 (parameters sharded) around ``model``; itself in one process."""
    if d.world_size == 1:
        return model
    return replicate_or_shard(model, device, fsdp=fsdp)


def replicate_or_shard(model: torch.nn.Module, device: torch.device, *, fsdp: bool) -> torch.nn.Module:
    """``model`` under FSDP2 (``fsdp``: ``fully_shard`` in place) or DDP, in the process group already joined
    (any size: the GPU tests run it in a group of one). ``device`` is this process's (on CUDA: its local GPU)."""
    if fsdp:
        from torch.distributed.fsdp import fully_shard
        for block in model.blocks:  # shard block by block, then the rest (embeddings, head)
            fully_shard(block)
        fully_shard(model)
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda" else None)


def full_state_dicts(model: torch.nn.Module, optimizer: torch.optim.Optimizer, *,
                     sharded: bool) -> tuple[dict, dict]:
    """Model and optimizer state dicts, unsharded: under FSDP (``sharded``) every process must call this."""
    if not sharded:
        return model.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=opts), get_optimizer_state_dict(model, optimizer, options=opts)


def load_full_state_dicts(model: torch.nn.Module, optimizer: torch.optim.Optimizer, model_state: dict,
                          optim_state: dict) -> None:
    """Full (unsharded) states, as :func:`full_state_dicts` gives them -> this process's FSDP shards."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict
    opts = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_state, options=opts)
    set_optimizer_state_dict(model, optimizer, optim_state, options=opts)


# --------------------------------------------------------------------------- stop signals

STOP_GRACE_S = 10.0  # the least time a stop may take to be agreed before the process ends itself (see StopSignal)
REPEAT_S = 2.0  # a signal this soon after the first repeats it (a terminal's Ctrl-C reaches torchrun's workers twice)


class StopSignal:
    """While entered, SIGINT / SIGTERM ask the loop to save and stop after the current step: ``requested`` becomes
    True; under torchrun the loop agrees on it with the other processes at the end of each step
    (:func:`main_clock_and_any_stop`), which :meth:`reached` reports.

    A process blocked in a collective (another process stuck or gone) runs no Python signal handler, so a
    watchdog thread hears the signals too (``signal.set_wakeup_fd``) and ends the process at once, in one line and
    with status 130, when a second signal comes (more than ``REPEAT_S`` after the first), or when no stop has been
    agreed ``grace`` seconds after the first: ``STOP_GRACE_S``, or twice the longest time between two agreements,
    if longer (a step, or a step with an evaluation). Every checkpoint already written stays whole, as after SIGKILL.
    """

    def __init__(self):
        self.requested = False
        self.grace = STOP_GRACE_S
        self._old: dict = {}
        self._first: float | None = None  # time.monotonic() of the first signal
        self._agreed = threading.Event()  # the stop was agreed: it no longer needs watching for a deadline
        self._done = threading.Event()  # exited: the watchdog has nothing left to do
        self._last_reached: float | None = None
        self._pipe: tuple[int, int] | None = None
        self._old_wakeup = -1

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is not threading.main_thread():  # only the main thread receives signals
            return self
        read, write = self._pipe = os.pipe()
        os.set_blocking(write, False)
        self._old_wakeup = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handle)
        threading.Thread(target=self._watch, args=(read,), name="tinylm-stop-watchdog", daemon=True).start()
        return self

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True

    def reached(self, stopping: bool) -> None:
        """The loop reached its agreement at the end of a step; ``stopping``: every process agreed to stop."""
        now = time.monotonic()
        if self._last_reached is not None:
            self.grace = max(self.grace, 2 * (now - self._last_reached))
        self._last_reached = now
        if stopping:
            self._agreed.set()

    def _watch(self, read: int) -> None:
        """The watchdog thread: reads each signal's number from the wakeup pipe (the main thread may be blocked)."""
        try:
            self._watch_until_done(read)
        finally:
            os.close(read)

    def _watch_until_done(self, read: int) -> None:
        while True:
            deadline = None if self._first is None or self._agreed.is_set() else self._first + self.grace
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([read], [], [], timeout)
            if self._done.is_set():
                return
            if not ready:  # the deadline passed (unless the stop was agreed meanwhile)
                if not self._agreed.is_set():
                    self._exit_now(f"did not stop within {self.grace:.0f} s of the signal (waiting for another "
                                   f"process that is stuck or gone?)")
                continue
            data = os.read(read, 64)
            now = time.monotonic()
            for signum in data:
                if signum not in (signal.SIGINT, signal.SIGTERM):
                    continue
                if self._first is None:
                    self._first = now
                elif now - self._first > REPEAT_S:
                    self._exit_now(f"a second signal ({signal.Signals(signum).name})")

    def _exit_now(self, why: str) -> None:
        """End the process from the watchdog thread, whatever the main thread is doing (unless it is done)."""
        if not self._done.is_set():
            exit_at_once(f"tinylm: stopped at once: {why}", 130)

    def __exit__(self, *exc) -> None:
        self._done.set()
        for sig, old in self._old.items():
            signal.signal(sig, old)
        if self._pipe is not None:
            signal.set_wakeup_fd(self._old_wakeup)
            write = self._pipe[1]
            with contextlib.suppress(OSError):  # full: the watchdog has bytes to read anyway
                os.write(write, b"\0")  # wakes the watchdog, which sees it is done
            os.close(write)


def exit_at_once(line: str, status: int, before_exit: Callable[[], None] = lambda: None) -> None:
    """Say ``line`` (and that only saved checkpoints remain) on stderr, run ``before_exit``, end the process with
    ``status`` without unwinding: no Python cleanup, no gloo destructors (which abort when a peer is gone)."""
    os.write(2, f"{line}; nothing is saved since the last checkpoint (continue from it with --resume)\n".encode())
    with contextlib.suppress(Exception):
        before_exit()
    os._exit(status)


def collective_failed(e: BaseException) -> bool:
    """Whether ``e`` is a collective that failed (torch's DistError, as NCCL raises it; gloo raises a plain
    RuntimeError naming its transport: ``[.../gloo/transport/tcp/pair.cc:537] Read error ...: Connection reset by
    peer``), as when another process of the job is gone."""
    return isinstance(e, dist.DistError) or (isinstance(e, RuntimeError) and "gloo" in str(e))


@contextlib.contextmanager
def ending_when_a_process_is_lost(d: Dist, before_exit: Callable[[], None]) -> Iterator[None]:
    """Under torchrun, a collective that fails inside this block (another process killed, out of memory, its
    machine gone) ends this process at once: one line, ``before_exit()`` (close the metric files), status 1.
    Not a traceback from the broken connection, then an abort from gloo's threads at the interpreter's exit;
    every checkpoint already written stays whole, as after SIGKILL. Entered inside :class:`StopSignal`, so
    the launcher's SIGTERM to the survivors, which comes at about the same time, only sets its flag."""
    try:
        yield
    except RuntimeError as e:
        if d.world_size == 1 or not collective_failed(e):
            raise
        line = next((ln for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        reason = line.split("] ", 1)[-1].split(". ", 1)[0]  # gloo's source position and advice go
        def close() -> None:  # in the main thread, so stdout's buffer is free to flush
            with contextlib.suppress(Exception):
                before_exit()
            sys.stdout.flush()
        exit_at_once(f"tinylm: error: process {d.rank}: a collective failed ({reason}): another process of the job "
                     f"is gone or broken (its own output says why); stopped at once", 1, close)


# --------------------------------------------------------------------------- RNG state

def rng_state() -> dict:
    """Every random stream a training step can touch, as tensors and plain data (weights_only-safe)."""
    np_state = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "gauss": float(np_state[4])}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Put back every stream :func:`rng_state` saved."""
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
