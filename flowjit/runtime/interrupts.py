"""Ctrl-C during a step that changes state.

A SIGINT that arrives while compiled code runs would otherwise raise between two
variable writes (a half-applied step), or inside a C-API call that Numba makes, where
it surfaces as `SystemError: CPUDispatcher(...) returned a result with an exception
set`. Within `deferred_interrupts()` SIGINT is only noted; when the block ends, the
step has either been applied completely or (if it raised) not at all, and the user's
handler then runs, so `KeyboardInterrupt` arrives as itself.

Swapping handlers per step costs two `sigaction` pairs (~8 us), so the first deferred
block installs one dispatcher that stays: outside a block it calls the handler it
replaced, at once. A handler the user installs later is wrapped again at the next step.
"""
import signal
import threading

import _signal            # signal.getsignal converts to enums: ~1.7 us; this is ~0.1 us

_MAIN = threading.main_thread()


class _Dispatcher:
    """The SIGINT handler while flowjit defers interrupts: note, or pass on."""

    def __init__(self, user):
        self.user = user          # the handler it replaced (default_int_handler usually)
        self.depth = 0            # > 0 inside a deferred block
        self.caught = None

    def __call__(self, signum, frame):
        if self.depth:
            self.caught = (signum, frame)
        else:
            self.user(signum, frame)


_dispatcher = None


class deferred_interrupts:
    __slots__ = ("d",)

    def __enter__(self):
        global _dispatcher
        self.d = None
        if threading.current_thread() is not _MAIN:
            return self              # Python runs signal handlers in the main thread only
        current = _signal.getsignal(signal.SIGINT)
        if _dispatcher is None or current is not _dispatcher:
            if not callable(current):
                return self          # SIG_IGN / SIG_DFL / a handler set from C: leave it
            d = _Dispatcher(current)
            signal.signal(signal.SIGINT, d)     # may raise an interrupt still pending
            _dispatcher = d
        self.d = _dispatcher
        self.d.depth += 1
        return self

    def __exit__(self, *exc):
        d = self.d
        if d is None:
            return False
        _run_pending_handlers()      # a signal that came during the step is noted now
        d.depth -= 1
        if d.depth == 0 and d.caught is not None:
            caught, d.caught = d.caught, None
            d.user(*caught)          # default_int_handler raises KeyboardInterrupt
        return False


def _run_pending_handlers():
    """A Python-level call: CPython runs the handlers of signals that arrived while
    compiled code ran at the next such point (here, while the dispatcher still notes)."""


def reraise_interrupt(err):
    """A SystemError that only wraps a KeyboardInterrupt raised inside compiled code
    (Numba returned with the exception set): the interrupt itself."""
    cause = err
    while isinstance(cause, SystemError):     # Numba nests them (e.g. around an unpickle)
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, KeyboardInterrupt):
        raise cause.with_traceback(None) from None
    raise err
