"""Every process a test starts can be stopped the way it is stopped in production.

A signal a process ignores stays ignored in every process it starts. A suite started
in the background by a non-interactive shell (a CI runner, `cmd &`) ignores SIGINT, and
each run Dagster executes in a test's own process copies SIGINT's handler onto SIGTERM
when it ends (`capture_interrupts`): from then on every server, run worker or
`jobs-pipeline` command the worker started would ignore SIGTERM, so a test stopping
one would wait out its grace, or forever. Each test starts with both signals as Python
sets them: SIGINT raises KeyboardInterrupt, SIGTERM ends the process.
"""

import signal

import pytest


def restore_stop_signals() -> None:
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def pytest_configure(config: pytest.Config) -> None:
    restore_stop_signals()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    restore_stop_signals()
