"""Request pacing for the chat client: a requests-per-minute limit and a shared Retry-After pause."""

from __future__ import annotations

import asyncio

__all__ = ["Pacer"]


class Pacer:
    """Spaces request starts at least ``60 / requests_per_minute`` seconds apart (no bursts), and
    holds every request back while a server-requested pause (Retry-After on a 429) is running:
    when the server says "slow down", all workers slow down, not only the one that was told."""

    def __init__(self, requests_per_minute: float | None = None):
        self.interval = 60.0 / requests_per_minute if requests_per_minute else 0.0
        self._next_start = 0.0
        self._paused_until = 0.0

    def pause_for(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        self._paused_until = max(self._paused_until, loop.time() + seconds)

    async def wait_turn(self) -> None:
        loop = asyncio.get_running_loop()
        while (delay := self._paused_until - loop.time()) > 0:
            await asyncio.sleep(delay)
        if self.interval:
            now = loop.time()
            start = max(now, self._next_start)  # reserve the next free slot (no await in between)
            self._next_start = start + self.interval
            if start > now:
                await asyncio.sleep(start - now)
