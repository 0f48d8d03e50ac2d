"""`jobs-pipeline`: run, list and serve the maintenance jobs.

`parser` builds the command line, each command naming the function that runs it; one
module per group of commands holds those functions.
"""

import argparse
import signal
import sys
from collections.abc import Sequence
from typing import Any

from jobs_pipeline.interfaces.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    UsageError,
)
from jobs_pipeline.interfaces.cli.parser import build_parser
from jobs_pipeline.storage.embedded import EmbeddedServerError


def stop_on_sigterm_as_on_ctrl_c() -> None:
    """SIGTERM (`kill`, a service manager, a CI runner's timeout) stops a command the way
    Ctrl-C does. Python's default for SIGTERM ends the process on the spot, skipping its
    exit handlers: the embedded PostgreSQL it started would be left running, and a
    queued run would stay queued. Whatever handles Ctrl-C at that moment (Dagster's, in
    the middle of a run) handles SIGTERM too.
    """

    def on_sigterm(_signum: int, frame: Any) -> None:
        on_ctrl_c = signal.getsignal(signal.SIGINT)
        if callable(on_ctrl_c):
            on_ctrl_c(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stop_on_sigterm_as_on_ctrl_c()
    try:
        return run_command(args)
    finally:
        # The command is over; what is left are the exit handlers, which stop the embedded
        # PostgreSQL it started. A stop arriving now would cut them short and leave the
        # server running, so it is ignored: the process is about to end anyway.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def run_command(args: argparse.Namespace) -> int:
    try:
        return int(args.command(args))
    except UsageError as error:
        print(f"jobs-pipeline: {error}", file=sys.stderr)
        return EXIT_USAGE
    except EmbeddedServerError as error:
        print(f"jobs-pipeline: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        # The exit handlers still run: the embedded PostgreSQL this process started stops.
        print("jobs-pipeline: stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
