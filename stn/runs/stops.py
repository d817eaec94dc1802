"""A command stopped by a signal says so: Lightning ends a SIGTERM with a SystemExit of status 0 and
a Ctrl-C with status 1 after "attempting graceful shutdown", which a scheduler or a script would
misread. Every command that runs a Lightning loop (train's fit and test, eval's test) goes through
`stops_reported`, which turns either into `RunInterrupted`: its own sentence and 128 + the signal's
number as the exit status. Outside a Lightning loop (starting up, building the model, DDP's ranks
meeting), `stop_on_sigterm` does the same, and passes the signal on to the processes below (DDP's
other ranks would otherwise be left waiting for the first)."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from stn.errors import RunInterrupted
from stn.utils.processes import descendants


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


def stop_on_sigterm(command: str) -> None:
    """From now on in this process (its main thread), SIGTERM ends `command` with its sentence and
    143, after sending SIGTERM to every process below it. While a Lightning loop runs, Lightning's
    own handler (which calls this one after its own) stops the loop at its next batch instead, and
    this one does nothing. DDP's other ranks (LOCAL_RANK > 0) end quietly: rank 0 says it. A handler
    someone else installed first (submitit's, in a SLURM job) is left in place."""

    def stop(signum: int, frame: Any) -> None:
        if signal.getsignal(signal.SIGTERM) is not stop:
            return  # a Lightning loop holds the signal: it stops at its next batch, and says so
        for pid in descendants(os.getpid()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        if os.environ.get("LOCAL_RANK", "0") != "0":
            os._exit(128 + signum)
        raise RunInterrupted(f"{command} was stopped (SIGTERM) before it finished; run it again", signum)

    if signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None):
        return  # another owner's (submitit's in a SLURM job, which waits for the requeue): left to it
    with contextlib.suppress(ValueError):  # not the main thread (a sweep's thread pool): left alone
        signal.signal(signal.SIGTERM, stop)
