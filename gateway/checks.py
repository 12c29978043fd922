"""Upload checks off the event loop, and a bound on how many the gateway takes on at once.

A check decodes the image (up to a second for a 40 MP photo), so it runs on one of a few
threads.  Without a bound, a burst of uploads would queue in the pool without end, each
holding its bytes, and every client would wait longer; past ``workers + waiting`` checks a new
upload is refused at once with a 503 and Retry-After, which a client can act on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from gateway.uploads import check_image
from shared.errors import UploadsBusy


class ImageChecks:
    """``check_image`` on ``workers`` threads, with room for ``waiting`` more in line."""

    def __init__(
        self, workers: int, waiting: int, check: Callable[[bytes], str] = check_image
    ) -> None:
        # Threads start only when the first upload is checked.
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="image-check")
        self._check = check
        self.capacity = workers + waiting
        self.held = 0  # checks running or in line; changed on the event loop only

    async def media_type(self, data: bytes) -> str:
        """The upload's media type (``check_image``), or UploadsBusy when every thread and
        every place in line is taken."""
        if self.held >= self.capacity:
            raise UploadsBusy(
                f"the gateway is checking {self.held} uploads, as many as it takes at once; "
                "retry shortly"
            )
        loop = asyncio.get_running_loop()
        future = self._executor.submit(self._check, data)
        self.held += 1

        # Released when the check itself ends, not when the request does: a client that
        # hangs up leaves its running check on a thread, and that thread is still taken.
        def release(_: Future[str]) -> None:
            # If the loop closed first, nothing is left to count for.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._release)

        future.add_done_callback(release)
        return await asyncio.wrap_future(future)

    def _release(self) -> None:
        self.held -= 1

    def close(self) -> None:
        """Drop the checks still in line; a running one ends on its own."""
        self._executor.shutdown(wait=False, cancel_futures=True)
