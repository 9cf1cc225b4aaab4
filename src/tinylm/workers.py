"""Process-pool workers that die with their parent: a killed ``prepare`` or ``tokenizer train`` leaves no process.

A pool's workers wait on a pipe from the parent. When the parent is killed (SIGKILL, or SIGTERM, whose
default action ends it without running any cleanup), nothing closes that pipe for them and they would wait
forever (``tinylm prepare | tee log`` would never end). :func:`watch_parent`, run as the pool's initializer,
has the kernel kill the worker when its parent dies (Linux: ``prctl(PR_SET_PDEATHSIG)``) and, everywhere, a
thread that ends the worker once its parent is gone.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
POLL_S = 1.0  # how often the watching thread looks for the parent (where prctl is not available)


def watch_parent(parent: int) -> None:
    """End this process when the process ``parent`` (the pool's owner, ``os.getpid()`` there) is gone.

    Pass it as a pool's ``initializer`` with ``initargs=(os.getpid(),)``.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # no libc to load: the thread below still watches
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
    threading.Thread(target=_poll, args=(parent,), daemon=True, name="tinylm-watch-parent").start()


def _poll(parent: int) -> None:
    while os.getppid() == parent:  # an orphan is re-parented (to init or a subreaper): its ppid changes
        time.sleep(POLL_S)
    os._exit(1)
