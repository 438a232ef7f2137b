"""The one family of errors that end a command with one line (`spfde: error: ...`) instead of a traceback.

Every error a user can cause or fix (a bad override, a missing data set, a damaged run directory, a run
that diverged) derives from `SpfdeError`; the commands catch this base, so a new error type needs no change
to them. Errors of the code itself stay ordinary exceptions and keep their tracebacks.
"""

from __future__ import annotations

import functools
import sys


class SpfdeError(Exception):
    """An error whose message says what went wrong and what to do; shown as one line."""


def exit_on_error(main):
    """Wrap a command's `main`: an `SpfdeError` prints one line and exits with status 2."""

    def command(argv: list[str] | None = None) -> None:
        try:
            main(argv)
        except SpfdeError as e:
            print(f"spfde: error: {e}", file=sys.stderr)
            sys.exit(2)

    return functools.wraps(main)(command)
