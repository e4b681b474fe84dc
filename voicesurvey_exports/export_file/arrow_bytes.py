"""Arrow string arrays for the writers that build their text with Arrow kernels
(file_formats.py's JSON Lines, xlsx_format.py's sheet XML): escaping only the values that
need it, and the bytes behind an array, handed on without a copy."""

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def escape_where_needed(
    values: pa.Array, special: str, escape: Callable[[pa.Array], pa.Array]
) -> pa.Array:
    """`values` with `escape` applied to those that match the regex `special` only: one
    scan of the block, and the escape's many passes over the few values that need them
    (NULL stays NULL)."""
    needs = pc.fill_null(pc.match_substring_regex(values, special), False)
    if not pc.any(needs).as_py():
        return values
    return pc.replace_with_mask(values, needs, escape(pc.filter(values, needs)))


def string_bytes(lines: pa.Array) -> memoryview:
    """The concatenated bytes of a string array without NULLs (no copy)."""
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)
    first, last = offsets[lines.offset], offsets[lines.offset + len(lines)]
    return memoryview(lines.buffers()[2])[first:last]
