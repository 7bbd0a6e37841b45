"""How every ``lightning-topo`` subcommand reports a refused input: one line, exit status 2."""

from __future__ import annotations

import sys

__all__ = ["USER_ERRORS", "report_refusal"]

#: Exceptions that mean "bad input" when raised before any work is done (the library raises them
#: naming the argument or file): printed as one line, exit status 2. Anything else is a bug and
#: keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)


def report_refusal(command: str, err: BaseException) -> int:
    """Print ``lightning-topo COMMAND: error: MESSAGE`` (whitespace folded to one line) on stderr;
    returns the exit status 2."""
    message = " ".join(str(err).split()) or type(err).__name__
    print(f"lightning-topo {command}: error: {message}", file=sys.stderr)
    return 2
