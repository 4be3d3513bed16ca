"""Process pools for image work: one decode per core, OpenCV's own threads switched off.

with opencv_single_threaded():
    with multiprocessing.get_context("fork").Pool(workers) as pool: ...
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import cv2


@contextlib.contextmanager
def opencv_single_threaded() -> Iterator[None]:
    """Switch OpenCV threading off in this process for the block, then restore it.

    The pools already run one process per core, so OpenCV threads would only oversubscribe them;
    and it must happen in the parent before forking, because calling cv2.setNumThreads inside a
    forked child can deadlock on the thread pool it inherited.
    """
    previous = cv2.getNumThreads()
    cv2.setNumThreads(0)
    try:
        yield
    finally:
        cv2.setNumThreads(previous)
