"""The bytes behind an Arrow string array, for writers that hand them on without a copy
(file_formats.py's JSON Lines, xlsx_format.py's sheet XML)."""

import numpy as np
import pyarrow as pa


def string_bytes(lines: pa.Array) -> memoryview:
    """The concatenated bytes of a string array without NULLs (no copy)."""
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)
    first, last = offsets[lines.offset], offsets[lines.offset + len(lines)]
    return memoryview(lines.buffers()[2])[first:last]
