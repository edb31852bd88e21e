"""Array types of the model layer: numpy arrays by element type, for annotations.

Offsets, line numbers and frame numbers are int64; indices into arrays are intp; bytes of kernel
text are uint8; per-element tests are bool.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["I64", "I32", "I16", "I8", "U64", "U8", "Intp", "Bool", "F64", "Ints"]

I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]
I16 = npt.NDArray[np.int16]
I8 = npt.NDArray[np.int8]
U64 = npt.NDArray[np.uint64]
U8 = npt.NDArray[np.uint8]
Intp = npt.NDArray[np.intp]
Bool = npt.NDArray[np.bool_]
F64 = npt.NDArray[np.float64]
Ints = npt.NDArray[np.integer]  # any integer type: an argument that is only read
