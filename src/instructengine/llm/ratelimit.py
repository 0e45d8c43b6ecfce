"""Request pacing for the chat client: an optional requests-per-minute limit.

A server's 429 + Retry-After is handled per request by the client (that request waits what the
server asked; the others go on): a pause shared by every worker turned each 429 into a stall of
the whole pool, slower than serial at a 30% rate-limit rate.
"""

from __future__ import annotations

import asyncio

__all__ = ["Pacer"]


class Pacer:
    """Spaces request starts at least ``60 / requests_per_minute`` seconds apart (no bursts)."""

    def __init__(self, requests_per_minute: float | None = None):
        self.interval = 60.0 / requests_per_minute if requests_per_minute else 0.0
        self._next_start = 0.0

    async def wait_turn(self) -> None:
        if self.interval:
            loop = asyncio.get_running_loop()
            now = loop.time()
            start = max(now, self._next_start)  # reserve the next free slot (no await in between)
            self._next_start = start + self.interval
            if start > now:
                await asyncio.sleep(start - now)
