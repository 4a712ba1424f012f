"""The block-volume interface the iSCSI/SCSI frontend serves, and its error types."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

ResizeCallback = Callable[[int, int], None]  # (old size, new size) in bytes


class VolumeError(Exception):
    """Base of every error a volume reports to the frontend."""


class VolumeNotReady(VolumeError):
    """The volume cannot serve I/O yet (waiting for replicas, resynchronising)."""


class VolumeIOError(VolumeError):
    """The I/O failed on every replica that could serve it."""


class VolumeMediumError(VolumeIOError):
    """Data at `offset` failed its checksum on every replica holding it: MEDIUM ERROR."""

    def __init__(self, offset: int, message: str) -> None:
        super().__init__(message)
        self.offset = offset


class VolumeFenced(VolumeError):
    """A newer controller (higher epoch) owns the volume; this one must stop serving."""


class OutOfRange(VolumeError):
    """The request reaches past the end of the volume."""


@runtime_checkable
class BlockVolume(Protocol):
    """What a SCSI logical unit needs from the storage behind it (see docs/DESIGN.md §1).

    The frontend only reads `name`, `size` and `block_size`: a volume may hold them in plain
    attributes or serve them as read-only properties. A volume whose size changes while it is
    served (the replicated volume grows online) says so through `on_resize`.
    """

    @property
    def name(self) -> str: ...

    @property
    def size(self) -> int:
        """Bytes, a multiple of `block_size`."""
        ...

    @property
    def block_size(self) -> int:
        """The logical block size the target reports (512)."""
        ...

    async def read(self, offset: int, length: int) -> bytes | bytearray | memoryview: ...

    async def write(self, offset: int, data: bytes | memoryview, fua: bool = False) -> None: ...

    async def flush(self) -> None: ...

    async def unmap(self, offset: int, length: int) -> None: ...

    async def allocated(self, offset: int, length: int) -> list[tuple[int, int, bool]]: ...

    def ready(self) -> bool: ...

    def on_resize(self, callback: ResizeCallback) -> Callable[[], None]:
        """Call `callback(old, new)` each time `size` has changed (after the change: I/O up to
        the new size is allowed by then); returns a function that unregisters it."""
        ...


class ResizeListeners:
    """The callbacks registered with a volume's `on_resize`; the volume calls `notify` once its
    size has changed."""

    def __init__(self) -> None:
        self._callbacks: list[ResizeCallback] = []

    def add(self, callback: ResizeCallback) -> Callable[[], None]:
        """Register `callback`; returns the function that unregisters it."""
        self._callbacks.append(callback)

        def remove() -> None:
            if callback in self._callbacks:
                self._callbacks.remove(callback)

        return remove

    def notify(self, old: int, new: int) -> None:
        """Tell every registered callback that the size went from `old` to `new` bytes."""
        for callback in list(self._callbacks):
            callback(old, new)


def check_range(size: int, offset: int, length: int) -> None:
    """Raise OutOfRange unless [offset, offset+length) lies inside a volume of `size` bytes."""
    if offset < 0 or length < 0 or offset + length > size:
        raise OutOfRange(f"range {offset}+{length} outside volume of {size} bytes")
