"""The HTTP replies one guarded call keeps for its next attempts.

The guarded client (`qwed_guard.client`) fills it; the call context (`qwed_guard.context`)
carries it from attempt to attempt. It sits below both, so neither needs the other for it.
"""

from __future__ import annotations

__all__ = ["CallReplies"]


class CallReplies:
    """The successful HTTP replies of one guarded call, kept for its next attempts."""

    __slots__ = ("kept", "reused")

    def __init__(self) -> None:
        self.kept: dict[bytes, tuple[int, int, list[tuple[bytes, bytes]], bytes]] = {}
        """request key -> (attempt that got it, status, headers, content)"""
        self.reused: dict[int, int] = {}
        """attempt number -> replies it reused"""

    def reused_by(self, attempt: int) -> int:
        return self.reused.get(attempt, 0)
