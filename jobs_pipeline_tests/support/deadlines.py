"""How long a test waits for something before it calls it a failure.

Every wait is for a condition, and every deadline is generous: a shared CI machine, or a
suite run beside another on the same cores, stretches timings several times over. A
passing test never waits for its deadline, so a long one costs nothing.
`JOBS_PIPELINE_TEST_DEADLINE_SCALE` (a number, 1 by default) scales them all at once,
for a machine slower still.
"""

import os
import signal
import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

SCALE = float(os.environ.get("JOBS_PIPELINE_TEST_DEADLINE_SCALE") or 1)


def deadline(seconds: float) -> float:
    return seconds * SCALE


def wait_until(condition: Callable[[], T], seconds: float, what: str, interval: float = 0.2) -> T:
    """`condition()`'s first truthy value, read every `interval` until the scaled deadline."""
    give_up = time.monotonic() + deadline(seconds)
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > give_up:
            raise AssertionError(f"{what}: not within {deadline(seconds):.0f} s")
        time.sleep(interval)


def finish(thread: threading.Thread, seconds: float) -> None:
    """Waits for the thread to end; fails, naming the deadline, if it is still going."""
    thread.join(timeout=deadline(seconds))
    assert not thread.is_alive(), f"{thread.name} still going after {deadline(seconds):.0f} s"


def as_a_terminals_job() -> None:
    """`preexec_fn` for a command the test stops as a terminal would: Ctrl-C and SIGTERM
    at their defaults, whatever the test runner inherited (a CI step started in the
    background has SIGINT ignored, and its children with it).
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
