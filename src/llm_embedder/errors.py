"""One exception type for mistakes a user can fix.

Every check of user input (files, arguments, model names) raises :class:`UserError` with a one-line
message that names the file and line or the argument. The CLIs catch it and print only that line
(exit status 2), so bad input never surfaces as a traceback.
"""
from typing import Sequence


class UserError(ValueError):
    """A problem in the user's input, reported as one line that says what to fix."""


def cli_guard(main):
    """Wrap a CLI ``main(argv=None)`` so a :class:`UserError` prints one line and exits 2, and a closed
    stdout (``| head``) ends the command quietly (exit 141, as for SIGPIPE) instead of a traceback."""
    import functools
    import sys

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        except BrokenPipeError:  # `llm-embedder report ... | head`: the reader left; stop quietly like `cat`
            import os

            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail again
            raise SystemExit(141) from None

    return wrapped


MAX_REPORTED_ERRORS = 50


def raise_if_errors(errors: Sequence[str]) -> None:
    """Raise a UserError holding the first ``MAX_REPORTED_ERRORS`` problems, one per line."""
    if not errors:
        return
    shown = list(errors[:MAX_REPORTED_ERRORS])
    if len(errors) > len(shown):
        shown.append(f"... and {len(errors) - len(shown)} more problems")
    raise UserError("\n".join(shown))
