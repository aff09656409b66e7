"""User-facing errors: one readable line, never a traceback wall."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


class GrrlError(Exception):
    """Base class of errors caused by input (a bad file, a wrong flag); the message is the
    whole story and names the file or setting at fault."""


def run_cli(func: Callable[[Any], int], args: Any, prog: str = "grrl") -> int:
    """Run a CLI command; a GrrlError becomes ``prog: error: message`` and exit status 2."""
    try:
        return func(args)
    except GrrlError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
