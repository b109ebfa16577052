"""Block dot products written as LLVM vector IR (numba intrinsics).

LLVM does not find the int8 dot product in plain numba loops (numba widens int32
arithmetic to int64, so the loops compile to scalar ``imul``). These intrinsics
state the block product directly as vectors: widen 32 weights and 32 int8
activations to i32, multiply, ``llvm.vector.reduce.add``. That is portable IR;
the x86 back end turns it into ``vpdpbusd`` (AVX512-VNNI / AVX-VNNI) or
``vpmaddwd`` (AVX2) for the CPU numba compiles for, and into plain SIMD elsewhere.

    q4_dot(data, p, x, xb)  = sum_j lo(data[p+j]) * x[xb+j] + hi(data[p+j]) * x[xb+16+j]
    q8_dot(data, p, x, xb)  = sum_j int8(data[p+j]) * x[xb+j]       (j < 32)

``data`` is any 1-D uint8 array, ``x`` any 1-D int8 array; offsets are element
indices and are not bounds-checked.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_I8 = ir.IntType(8)
_I32 = ir.IntType(32)


def _vec_ptr(context, builder, aty, arr, idx, n):
    a = context.make_array(aty)(context, builder, arr)
    return builder.bitcast(builder.gep(a.data, [idx]), ir.PointerType(ir.VectorType(_I8, n)))


def _reduce_add(builder, v):
    fnty = ir.FunctionType(_I32, [v.type])
    fn = cgutils.get_or_insert_function(
        builder.module, fnty, f"llvm.vector.reduce.add.v{v.type.count}i32"
    )
    return builder.call(fn, [v])


def _check(data, x):
    return (
        isinstance(data, types.Array) and data.ndim == 1 and data.dtype == types.uint8
        and isinstance(x, types.Array) and x.ndim == 1 and x.dtype == types.int8
    )


@intrinsic
def q4_dot(typingctx, data, p, x, xb):
    """int32 dot of one Q4 block's 16 nibble bytes at data[p] with x[xb:xb+32]."""
    if not _check(data, x):
        return None
    sig = types.int32(data, types.int64, x, types.int64)

    def codegen(context, builder, sig, args):
        v16 = ir.VectorType(_I8, 16)
        v32 = ir.VectorType(_I32, 32)
        p = context.cast(builder, args[1], sig.args[1], types.int64)
        xb = context.cast(builder, args[3], sig.args[3], types.int64)
        w = builder.load(_vec_ptr(context, builder, sig.args[0], args[0], p, 16), align=1)
        lo = builder.and_(w, ir.Constant(v16, [15] * 16))
        hi = builder.lshr(w, ir.Constant(v16, [4] * 16))
        w32 = builder.shuffle_vector(lo, hi, ir.Constant(v32, list(range(32))))
        xv = builder.load(_vec_ptr(context, builder, sig.args[2], args[2], xb, 32), align=1)
        m = builder.mul(builder.zext(w32, v32), builder.sext(xv, v32))
        return _reduce_add(builder, m)

    return sig, codegen


@intrinsic
def q8_dot(typingctx, data, p, x, xb):
    """int32 dot of 32 int8 weights at data[p] with x[xb:xb+32]."""
    if not _check(data, x):
        return None
    sig = types.int32(data, types.int64, x, types.int64)

    def codegen(context, builder, sig, args):
        v32 = ir.VectorType(_I32, 32)
        p = context.cast(builder, args[1], sig.args[1], types.int64)
        xb = context.cast(builder, args[3], sig.args[3], types.int64)
        w = builder.load(_vec_ptr(context, builder, sig.args[0], args[0], p, 32), align=1)
        xv = builder.load(_vec_ptr(context, builder, sig.args[2], args[2], xb, 32), align=1)
        m = builder.mul(builder.sext(w, v32), builder.sext(xv, v32))
        return _reduce_add(builder, m)

    return sig, codegen
