"""Decoding uploads for the service on a few threads, fairly, within a pixel budget, giving memory back.

Three rules keep one client's uploads from hurting the others:
  * a request's images are sized from their headers first, and the request is refused (413
    `too_many_pixels`) when they add up to more than its budget, before any is decoded;
  * each request has at most one image in the threads' FIFO queue at a time: its next image is queued
    behind everyone else's, so a light request waits for at most one image per request ahead of it;
  * when the threads fall idle after a burst, glibc is asked to return freed memory to the system
    (large decodes otherwise leave RSS at its peak for the life of the process).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TypeVar

import numpy as np

from .errors import MnistCnnError
from .preprocess import ImageError, decoded_size, load_image

T = TypeVar("T")
TRIM_AFTER_PIXELS = 20_000_000  # decoded since the last trim: below this, what is kept is not worth a syscall


class ServiceBusy(MnistCnnError):
    """More requests are waiting to decode than the queue allows; the service answers 503."""

    code = "busy"


class DecodePool:
    """`await pool.load_all([(name, bytes), ...])` -> uint8 [N, 28, 28], decoded on `threads` threads."""

    def __init__(self, threads: int, queue: int, max_pixels: int, max_request_pixels: int) -> None:
        self.queue, self.max_pixels, self.max_request_pixels = queue, max_pixels, max_request_pixels
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="mnist-cnn-decode")
        self._requests = 0  # admitted and not finished; only touched on the event loop
        self._pixels_since_trim = 0

    async def load_all(self, blobs: list[tuple[str, bytes]]) -> np.ndarray:
        if self._requests >= self.queue:
            raise ServiceBusy(f"{self._requests} requests are already waiting to decode images (the limit is "
                              f"{self.queue}); try again shortly")
        self._requests += 1
        try:
            pixels = await self._run(partial(self._budget, blobs))
            images = [await self._run(partial(load_image, data, name=name, max_pixels=self.max_pixels))
                      for name, data in blobs]
            self._pixels_since_trim += pixels
        finally:
            self._requests -= 1
        if self._requests == 0 and self._pixels_since_trim >= TRIM_AFTER_PIXELS:
            self._pixels_since_trim = 0
            self._executor.submit(release_memory)
        return np.stack(images)

    async def _run(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    def _budget(self, blobs: list[tuple[str, bytes]]) -> int:
        """Pixels the request's images would decode to, from their headers; refused when over the budget."""
        total = 0
        for name, data in blobs:
            w, h = decoded_size(data, name=name, max_pixels=self.max_pixels)
            total += w * h
        if total > self.max_request_pixels:
            raise ImageError(f"the {len(blobs)} images of this request would decode to {total:,} pixels, over the "
                             f"limit of {self.max_request_pixels:,} per request; refused before decoding",
                             "too_many_pixels")
        return total


def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # musl has no malloc_trim, and gives memory back by itself
        return None


_TRIM = _malloc_trim()


def release_memory() -> bool:
    """Return the C heap's free pages to the system (glibc); False where there is nothing to call."""
    return bool(_TRIM(0)) if _TRIM is not None else False
