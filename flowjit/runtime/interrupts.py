"""Ctrl-C during a step that changes state.

A SIGINT that arrives while compiled code runs would otherwise raise between two
variable writes (a half-applied step), or inside a C-API call that Numba makes, where
it surfaces as `SystemError: CPUDispatcher(...) returned a result with an exception
set`. Within `deferred_interrupts()` SIGINT is only noted; when the block ends, the
step has either been applied completely or (if it raised) not at all, and the user's
handler then runs, so `KeyboardInterrupt` arrives as itself.
"""
import signal
import threading

_MAIN = threading.main_thread()
_state = threading.local()


class deferred_interrupts:
    __slots__ = ("old", "caught")

    def __enter__(self):
        self.old = None
        if threading.current_thread() is not _MAIN or getattr(_state, "active", False):
            return self                  # handlers run in the main thread; nested: outer defers
        old = signal.getsignal(signal.SIGINT)
        if not callable(old):            # SIG_IGN / SIG_DFL / set from C: leave it alone
            return self
        self.caught = None
        signal.signal(signal.SIGINT, self._note)    # may raise an interrupt still pending
        self.old = old
        _state.active = True
        return self

    def _note(self, signum, frame):
        self.caught = (signum, frame)

    def __exit__(self, *exc):
        if self.old is None:
            return False
        _run_pending_handlers()          # a signal that came during the step reaches _note
        _state.active = False
        signal.signal(signal.SIGINT, self.old)
        if self.caught is not None:
            self.old(*self.caught)       # default_int_handler raises KeyboardInterrupt
        return False


def _run_pending_handlers():
    """A Python-level call: CPython runs the handlers of signals that arrived while
    compiled code ran at the next such point (here, with _note still installed)."""


def reraise_interrupt(err):
    """A SystemError that only wraps a KeyboardInterrupt raised inside compiled code
    (Numba returned with the exception set): the interrupt itself."""
    cause = err
    while isinstance(cause, SystemError):     # Numba nests them (e.g. around an unpickle)
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, KeyboardInterrupt):
        raise cause.with_traceback(None) from None
    raise err
