"""Ctrl-C and SIGTERM as a flag, checked at safe points: never an exception raised inside foreign code.

A signal handler that raises runs wherever the interpreter happens to be, including inside a C
library's callback into Python (numba's compiled UMAP code calls back through ctypes), where the
exception cannot unwind and the process can crash. So the command line installs :func:`catching`:
the first SIGINT or SIGTERM only records the signal; the work stops at the next safe point
(:func:`check`: between training steps, encoder batches, pipeline stages and file writes) by raising
:class:`Interrupted`, which the command reports in one line. A second signal stops the process at
once (exit status 128 + the signal), leaving what a kill leaves: the run's hidden working folder,
which the next run tidies or ``--resume`` continues.

As a library (no :func:`catching` around the call) Python's own Ctrl-C behaviour is unchanged.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_pending: list[int] = []  # the signals received and not yet acted on


class Interrupted(KeyboardInterrupt):
    """The command was asked to stop (Ctrl-C or SIGTERM) and stopped at a safe point."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def check() -> None:
    """Raise :class:`Interrupted` if a signal arrived since :func:`catching` began; else return at once."""
    if _pending:
        raise Interrupted(_pending[0])


def _record(signum: int, frame) -> None:
    if not _pending:
        _pending.append(signum)
        return
    try:  # the second one: stop now, as a kill would
        sys.stderr.write(f"mfvc-gpu: {signal.Signals(signum).name} again: stopped at once\n")
        sys.stderr.flush()
    finally:
        os._exit(128 + signum)


@contextmanager
def catching() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM set the flag :func:`check` reads (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _pending.clear()
    old = {s: signal.signal(s, _record) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        _pending.clear()


def pending() -> int | None:
    """The signal waiting to be acted on, if any."""
    return _pending[0] if _pending else None


@contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT and SIGTERM while the block runs (a few renames), then deliver them: the block is
    never cut in the middle by Ctrl-C. Outside the main thread it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    old = {}
    for s in (signal.SIGINT, signal.SIGTERM):
        try:
            old[s] = signal.signal(s, lambda signum, frame: caught.append(signum))
        except (ValueError, OSError):
            pass
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        for s in caught:
            handler = old.get(s)
            if callable(handler):
                handler(s, None)
            elif s == signal.SIGINT and handler != signal.SIG_IGN:
                raise KeyboardInterrupt
            elif handler != signal.SIG_IGN:
                os.kill(os.getpid(), s)


__all__ = ["Interrupted", "check", "catching", "pending", "deferred_signals", "SIGNALS"]
