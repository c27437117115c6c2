"""What an exception says, in the one line a user sees."""

from __future__ import annotations


def first_line(e: BaseException, limit: int = 300) -> str:
    """e's message's first non-empty line, at most limit characters; its type's name when the
    message is empty (a bare OSError, a KeyboardInterrupt)."""
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else type(e).__name__)[:limit]
