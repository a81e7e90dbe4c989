"""Float formats decoded inside compiled (numba) loops, exactly and without a table.

numba has no float16 type and no scalar bit cast; these two LLVM-level intrinsics supply both, so that a
loop decoding bf16 or fp16 codes stays a straight vectorizable loop (a register rename for bf16, F16C's
``vcvtph2ps`` for fp16 where the CPU has it).
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic


@intrinsic
def as_float32(typingctx, bits):
    """Reinterpret a uint32's bits as a float32 (no conversion: the same register)."""

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.uint32), codegen


@intrinsic
def half_to_float(typingctx, bits):
    """IEEE fp16 bits (a uint16) -> float32: LLVM's ``fpext half``, exact for every code, subnormals,
    infinities and NaN included."""

    def codegen(context, builder, sig, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(types.uint16), codegen
