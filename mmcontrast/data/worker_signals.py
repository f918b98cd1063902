"""DataLoader workers leave stopping to the process that owns them.

Schedulers stop a job with SIGTERM to all its processes (``accelerate launch`` sends it to each rank's
process group), and Ctrl-C sends SIGINT to the terminal's whole group. A worker that dies of it takes its
training process down with ``RuntimeError: DataLoader worker (pid …) is killed by signal`` before that
process can save a checkpoint. So a worker ignores SIGINT, and SIGTERM from anyone but its parent: the
parent handles the signal and then shuts its workers down as usual; its ``Process.terminate`` still
ends a worker at once, as PyTorch's own SIGTERM handler does. A worker whose parent is gone ends by
itself (PyTorch's watchdog).
"""

from __future__ import annotations

import os
import signal
import threading


def leave_stop_signals_to_parent(worker_id: int) -> None:
    """The ``worker_init_fn`` of the loader's workers (see the module docstring)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):  # macOS: no sender to tell apart
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return
    # Blocked in this thread, and so in every thread it starts, SIGTERM waits for the one thread that
    # takes it with its sender's pid.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=_exit_on_sigterm_from, args=(os.getppid(),), name="sigterm", daemon=True).start()


def _exit_on_sigterm_from(parent: int) -> None:
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
            os._exit(0)
