"""A command stopped by a signal says so: Lightning ends a SIGTERM with a SystemExit of status 0 and
a Ctrl-C with status 1 after "attempting graceful shutdown", which a scheduler or a script would
misread. Every command that runs a Lightning loop (train's fit and test, eval's test) goes through
`stops_reported`, which turns either into `RunInterrupted`: its own sentence and 128 + the signal's
number as the exit status."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from stn.errors import RunInterrupted


@contextmanager
def stops_reported(sentence: Callable[[signal.Signals], str]) -> Iterator[None]:
    """Run the block; a SIGTERM (Lightning's SIGTERMException) or a Ctrl-C inside it ends as
    `RunInterrupted(sentence(signal))`. Any other exit is left as it is (submitit's, after it
    requeued a timed-out job)."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    try:
        yield
    except SIGTERMException:
        stopped = signal.SIGTERM
    except SystemExit as exit:  # Lightning's sys.exit(1) after a KeyboardInterrupt
        if not isinstance(exit.__context__, KeyboardInterrupt):
            raise
        stopped = signal.SIGINT
    else:
        return
    raise RunInterrupted(sentence(stopped), stopped) from None
