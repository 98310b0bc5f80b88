"""Video in and out for inference: frames decoded on a thread ahead of the model (bounded, so
memory stays flat however long the video), and a writer that falls back through codecs and
checks what it wrote.
"""
from __future__ import annotations

import os
import queue
import threading
from typing import Iterator, Optional, Union

import cv2
import numpy as np

from .io import DataError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
# (fourcc, container) tried in order; mp4v is in every OpenCV build, the others where available.
CODECS = (("mp4v", ".mp4"), ("avc1", ".mp4"), ("XVID", ".avi"), ("MJPG", ".avi"))


class VideoReader:
    """Iterate RGB frames of a video file or a camera, decoded on a background thread.

    Args:
        source: a file path, or an int camera index.
        prefetch: frames decoded ahead at most (the queue bound keeps memory constant).
        max_frames: stop after this many (cameras never end on their own).

    Raises:
        DataError: the file is missing or OpenCV cannot open or decode it.
    """

    def __init__(self, source: Union[str, int], prefetch: int = 8, max_frames: Optional[int] = None):
        self.source = source
        if isinstance(source, str) and not os.path.isfile(source):
            raise DataError(f"{source}: video file not found")
        self.cap = cv2.VideoCapture(source)
        if not self.cap.isOpened():
            raise DataError(f"{source}: cannot open video (unreadable file or unsupported codec)")
        self.fps = self.cap.get(cv2.CAP_PROP_FPS) or 25.0
        self.width = int(self.cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(self.cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        count = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self.frame_count = count if count > 0 else None  # containers may not say
        if max_frames is not None and self.frame_count is not None:
            self.frame_count = min(self.frame_count, max_frames)
        self.max_frames = max_frames
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._decode, daemon=True)
        self._started = False

    def _decode(self) -> None:
        n = 0
        try:
            while not self._stop.is_set() and (self.max_frames is None or n < self.max_frames):
                ok, frame = self.cap.read()
                if not ok:
                    break
                self._put(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
                n += 1
        finally:
            self._put(None)

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self) -> Iterator[np.ndarray]:
        if not self._started:
            self._started = True
            self._thread.start()
        n = 0
        while True:
            frame = self._queue.get()
            if frame is None:
                break
            n += 1
            yield frame
        if n == 0:
            raise DataError(f"{self.source}: no frame could be decoded")

    def close(self) -> None:
        self._stop.set()
        if self._started:
            self._thread.join(timeout=5)
        self.cap.release()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class VideoWriter:
    """Write RGB frames; the codec falls back through ``CODECS`` until one opens.

    ``path`` is a stem: the container extension of the codec that worked is appended
    (``self.path`` says which). ``close()`` re-opens the file and checks its frame count.
    """

    def __init__(self, stem: str, fps: float, size: tuple[int, int]):
        w, h = size
        self.expected = 0
        self.writer = None
        tried = []
        for fourcc, ext in CODECS:
            path = stem + ext
            writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
            if writer.isOpened():
                self.writer, self.path, self.codec = writer, path, fourcc
                break
            writer.release()
            if os.path.exists(path) and os.path.getsize(path) == 0:
                os.remove(path)
            tried.append(fourcc)
        if self.writer is None:
            raise DataError(f"{stem}: no video codec could be opened for writing (tried {', '.join(tried)})")
        self.size = (w, h)

    def write(self, rgb: np.ndarray) -> None:
        if (rgb.shape[1], rgb.shape[0]) != self.size:
            raise ValueError(f"frame {rgb.shape[1]}x{rgb.shape[0]} does not match the video {self.size}")
        self.writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        self.expected += 1

    def close(self) -> int:
        """Finish the file and verify it: re-opened, it must hold every frame written.

        Returns:
            the frame count read back.
        Raises:
            DataError: the file is unreadable or short of frames (it is then removed).
        """
        self.writer.release()
        cap = cv2.VideoCapture(self.path)
        n = 0
        while cap.isOpened() and cap.grab():
            n += 1
        cap.release()
        if n != self.expected:
            if os.path.exists(self.path):
                os.remove(self.path)
            raise DataError(f"{self.path}: wrote {self.expected} frames but {n} can be read back "
                            f"(codec {self.codec}); the broken file was removed")
        return n
