"""The IDX file format (MNIST's), read safely: plain or gzip, never more than promised.

The header is two zero bytes, a type code (0x08 = unsigned byte, ...), the number of
dimensions, then each dimension as a big-endian uint32; the data follow, big-endian, and must
fill exactly the size the dimensions promise. :func:`read_idx` reads the header first and then
at most the promised size plus one byte, so a small ``.gz`` that inflates to gigabytes is
refused after reading what it promised.
"""

from __future__ import annotations

import gzip
import os

import numpy as np

_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path, *, ndim: int | None = None) -> np.ndarray:
    """Read one IDX file (the MNIST format), plain or gzip-compressed.

    The header is two zero bytes, a type code (0x08 = unsigned byte, ...), the number of
    dimensions, then each dimension as a big-endian uint32; the data follow, big-endian,
    and must fill exactly the size the dimensions promise.

    Args:
        path: the file; a name ending in ``.gz`` is decompressed.
        ndim: the number of dimensions expected (3 for images, 1 for labels), or ``None``.

    Returns:
        The array, in native byte order.

    Raises:
        ValueError: naming the file and the problem (bad gzip, short or corrupt header,
            wrong magic number, truncated data, trailing bytes).
    """
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            # Read only what the header promises (plus one byte to detect extra data): a
            # small .gz file may inflate to gigabytes, which must never be read whole.
            head = f.read(4)
            dims_n = head[3] if len(head) == 4 else 0
            head += f.read(4 * dims_n)
            dims, dtype, expected = _idx_header(path, head, ndim)
            raw = f.read(expected + 1)
            extra = _extra_bytes(path, f, len(head) + expected) if len(raw) > expected else 0
    except (gzip.BadGzipFile, EOFError, OSError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise ValueError(
            f"{path}: cannot decompress it ({err}); the .gz file is corrupt or truncated"
        ) from err
    shape = "x".join(map(str, dims))
    if len(raw) < expected:
        raise ValueError(
            f"{path}: truncated: header promises {shape} = {expected} data "
            f"bytes, the file holds {len(raw)}"
        )
    if extra:
        holds = f"{expected + extra} ({extra} extra)" if extra > 0 else "more"
        raise ValueError(
            f"{path}: size mismatch: header promises {shape} = {expected} data "
            f"bytes, the file holds {holds}"
        )
    return np.frombuffer(raw, dtype).reshape(dims).astype(dtype.newbyteorder("="))


def _idx_header(path: str, head: bytes, ndim: int | None):
    """``(dims, dtype, data bytes)`` of an IDX header, or a ValueError naming the file."""
    if len(head) < 4:
        raise ValueError(f"{path}: only {len(head)} bytes, too short for an IDX header")
    magic = int.from_bytes(head[:4], "big")
    code, dims_n = head[2], head[3]
    want = f"0x0000{_code(ndim)}" if ndim else "0x000008NN"
    if head[0] or head[1] or code not in _IDX_TYPES or (ndim is not None and dims_n != ndim):
        raise ValueError(
            f"{path}: wrong magic number 0x{magic:08X}, expected {want} "
            f"(is this the right IDX file?)"
        )
    header = 4 + 4 * dims_n
    if len(head) < header:
        raise ValueError(
            f"{path}: corrupt header: {dims_n} dimensions need {header} header "
            f"bytes, the file has {len(head)}"
        )
    dims = tuple(int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims_n))
    dtype = np.dtype(_IDX_TYPES[code])
    return dims, dtype, int(np.prod(dims, dtype=np.int64)) * dtype.itemsize


def _extra_bytes(path: str, f, promised: int) -> int:
    """Bytes past the promised size: counted for a plain file, -1 (unknown) for gzip."""
    if path.endswith(".gz"):
        return -1
    return os.fstat(f.fileno()).st_size - promised


def _code(ndim: int) -> str:
    return f"08{ndim:02X}"


__all__ = ["read_idx"]
