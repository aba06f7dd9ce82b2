"""A zip archive written as a stream: files go in chunk by chunk and the archive comes out the same way,
so serving a model of gigabytes holds a few MiB at a time (``GET /api/experiments/{id}/model``).

``zipfile`` writes to an unseekable file with data descriptors (sizes after each file's data) and ZIP64
where needed; :class:`_Sink` is such a file, drained after every write.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Iterable, Iterator


class _Sink(io.RawIOBase):
    """An unseekable file that keeps what was written until :meth:`drain` takes it."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._offset = 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._offset

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        chunk = bytes(data)
        self._parts.append(chunk)
        self._offset += len(chunk)
        return len(chunk)

    def drain(self) -> bytes:
        data, self._parts = b"".join(self._parts), []
        return data


def zip_stream(files: Iterable[tuple[str, Callable[[], Iterable[bytes]]]]) -> Iterator[bytes]:
    """The zip of ``files`` (``(name in the archive, a callable returning its chunks)``), deflated, as
    chunks; each file is read only when its turn comes."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, chunks in files:
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w", force_zip64=True) as member:
                for chunk in chunks():
                    member.write(chunk)
                    if data := sink.drain():
                        yield data
            if data := sink.drain():
                yield data
    if data := sink.drain():
        yield data
