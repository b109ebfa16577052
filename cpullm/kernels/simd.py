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


# ---------------------------------------------------------------------------------------
# Tiles: R weight rows x TT tokens over all blocks of a row, float accumulators in vector
# registers, one horizontal sum per (row, token) at the end.
#
#   tile(data, p0, rb, nblk, xq, xo, xst, xd, xs, do, dst, lut, out, oo, ost)
#
# weight row r (r < R) starts at byte p0 + r*rb of ``data``; token t (t < TT) has its int8
# activations at flat element xo + t*xst of ``xq`` and its block scales / block sums (block
# b) at flat element do + t*dst + b of ``xd`` / ``xs``. The result for (r, t) goes to flat
# element oo + t*ost + r of ``out``. Arrays are C-contiguous, offsets are not checked.
#
# Per block: each weight block is unpacked once into 32 unsigned (Q4) or signed (Q8) bytes
# and dotted with the TT activation blocks by ``vpdpbusd`` (u8 x s8 -> 8 x i32) where the
# CPU has AVX512-VNNI/AVX-VNNI, else by a widened multiply and a partial sum to 8 lanes;
# the 8 int32 lanes are converted and fused-multiply-added into an 8 x f32 accumulator
# with scale d_w * d_x. Q4_0's "-8" and Q4_1's offset ride on the block sums of x.
# ---------------------------------------------------------------------------------------

_F32 = ir.FloatType()
_I64 = ir.IntType(64)
_I16 = ir.IntType(16)


def _has_features(*names):
    """Whether the CPU numba compiles for has every one of the LLVM features ``names``."""
    import llvmlite.binding as llvm
    from numba.core import config

    if config.CPU_NAME and config.CPU_NAME != "host":
        feats = config.CPU_FEATURES or ""
    else:
        feats = llvm.get_host_cpu_features().flatten()
    have = {f[1:] for f in feats.split(",") if f.startswith("+")}
    return all(n in have for n in names)


_USE_VNNI = None


def _vnni():
    global _USE_VNNI
    if _USE_VNNI is None:
        _USE_VNNI = _has_features("avxvnni") or _has_features("avx512vnni", "avx512vl")
    return _USE_VNNI


def _flat_ptr(context, builder, aty, arr, idx, elt_ty):
    a = context.make_array(aty)(context, builder, arr)
    ptr = builder.gep(a.data, [idx])
    return builder.bitcast(ptr, ir.PointerType(elt_ty))


def _dot8(builder, a, b):
    """a (32 x u8 as i8), b (32 x s8) -> 8 x i32 partial sums (lane k: 4 products)."""
    v8 = ir.VectorType(_I32, 8)
    if _vnni():
        fnty = ir.FunctionType(v8, [v8, v8, v8])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.avx512.vpdpbusd.256")
        return builder.call(fn, [ir.Constant(v8, None), builder.bitcast(a, v8),
                                 builder.bitcast(b, v8)])
    v32 = ir.VectorType(_I32, 32)
    m = builder.mul(builder.zext(a, v32), builder.sext(b, v32))
    s = None
    for q in range(4):
        part = builder.shuffle_vector(m, m, ir.Constant(v8, [4 * k + q for k in range(8)]))
        s = part if s is None else builder.add(s, part)
    return s


def _hsum8(builder, v):
    v8 = ir.VectorType(_I32, 8)
    for width in (4, 2, 1):
        idx = [(k + width) % 8 for k in range(8)]
        v = builder.fadd(v, builder.shuffle_vector(v, v, ir.Constant(v8, idx)))
    return builder.extract_element(v, ir.Constant(_I32, 0))


def _splat(builder, s, n):
    vt = ir.VectorType(s.type, n)
    v = builder.insert_element(ir.Constant(vt, ir.Undefined), s, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, n), [0] * n))


def _fma(builder, a, b, c):
    if _has_features("fma"):
        fnty = ir.FunctionType(a.type, [a.type, a.type, a.type])
        fn = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.fma.v{a.type.count}f32")
        return builder.call(fn, [a, b, c])
    return builder.fadd(builder.fmul(a, b), c)


# ggml type ids (see tables.py); kept literal here to avoid an import cycle
_Q4_0, _Q4_1, _Q8_0 = 2, 3, 8


def make_tile(qtype, R, TT):
    """An intrinsic computing an R-rows x TT-tokens tile of a Q4_0/Q4_1/Q8_0 product."""
    bsz = {_Q4_0: 18, _Q4_1: 20, _Q8_0: 34}[qtype]
    qoff = bsz - (32 if qtype == _Q8_0 else 16)

    @intrinsic
    def tile(typingctx, data, p0, rb, nblk, xq, xo, xst, xd, xs, do, dst, lut, out, oo, ost):
        if not (isinstance(data, types.Array) and data.dtype == types.uint8
                and isinstance(xq, types.Array) and xq.dtype == types.int8
                and isinstance(out, types.Array) and out.dtype == types.float32):
            return None
        i64 = types.int64
        sig = types.void(data, i64, i64, i64, xq, i64, i64, xd, xs, i64, i64, lut, out, i64, i64)

        def codegen(context, builder, sig, args):
            (data_, p0_, rb_, nblk_, xq_, xo_, xst_, xd_, xs_, do_, dst_, lut_, out_, oo_,
             ost_) = args
            ta = sig.args
            p0_, rb_, nblk_, xo_, xst_, do_, dst_, oo_, ost_ = (
                context.cast(builder, v, ty, types.int64)
                for v, ty in ((p0_, ta[1]), (rb_, ta[2]), (nblk_, ta[3]), (xo_, ta[5]),
                              (xst_, ta[6]), (do_, ta[9]), (dst_, ta[10]), (oo_, ta[13]),
                              (ost_, ta[14]))
            )
            v8f = ir.VectorType(_F32, 8)
            vRf = ir.VectorType(_F32, R)
            v16 = ir.VectorType(_I8, 16)
            v32 = ir.VectorType(_I8, 32)
            c = lambda v: ir.Constant(_I64, v)  # noqa: E731
            acc = [[cgutils.alloca_once_value(builder, ir.Constant(v8f, None))
                    for _ in range(TT)] for _ in range(R)]
            off = None
            if qtype != _Q8_0:
                off = [cgutils.alloca_once_value(builder, ir.Constant(vRf, None))
                       for _ in range(TT)]

            def half_at(p):
                bits = builder.load(_flat_ptr(context, builder, ta[0], data_, p, _I16), align=1)
                idx = builder.zext(bits, _I64)
                return builder.load(_flat_ptr(context, builder, ta[11], lut_, idx, _F32))

            with cgutils.for_range(builder, nblk_) as loop:
                b = loop.index
                pb = builder.add(p0_, builder.mul(b, c(bsz)))
                dws, ms, ws = [], [], []
                for r in range(R):
                    pr = builder.add(pb, builder.mul(rb_, c(r))) if r else pb
                    dws.append(half_at(pr))
                    if qtype == _Q4_1:
                        ms.append(half_at(builder.add(pr, c(2))))
                    wp = builder.add(pr, c(qoff))
                    if qtype == _Q8_0:
                        ws.append(builder.load(
                            _flat_ptr(context, builder, ta[0], data_, wp, v32), align=1))
                    else:
                        w = builder.load(_flat_ptr(context, builder, ta[0], data_, wp, v16),
                                         align=1)
                        lo = builder.and_(w, ir.Constant(v16, [15] * 16))
                        hi = builder.lshr(w, ir.Constant(v16, [4] * 16))
                        ws.append(builder.shuffle_vector(
                            lo, hi, ir.Constant(ir.VectorType(_I32, 32), list(range(32)))))
                dwv = ir.Constant(vRf, ir.Undefined)
                for r in range(R):
                    dwv = builder.insert_element(dwv, dws[r], ir.Constant(_I32, r))
                mv = None
                if qtype == _Q4_1:
                    mv = ir.Constant(vRf, ir.Undefined)
                    for r in range(R):
                        mv = builder.insert_element(mv, ms[r], ir.Constant(_I32, r))
                if qtype == _Q8_0:
                    zero = ir.Constant(v32, None)
                    neg = [builder.icmp_signed("<", w, zero) for w in ws]
                    aw = [builder.select(n_, builder.sub(zero, w), w)
                          for n_, w in zip(neg, ws, strict=True)]
                xb = builder.mul(b, c(32))
                for t in range(TT):
                    xp = builder.add(builder.add(xo_, builder.mul(xst_, c(t))), xb)
                    xv = builder.load(_flat_ptr(context, builder, ta[4], xq_, xp, v32), align=1)
                    dp = builder.add(builder.add(do_, builder.mul(dst_, c(t))), b)
                    dx = builder.load(_flat_ptr(context, builder, ta[7], xd_, dp, _F32))
                    scv = builder.fmul(dwv, _splat(builder, dx, R))
                    if qtype != _Q8_0:
                        sx = builder.load(_flat_ptr(context, builder, ta[8], xs_, dp, _F32))
                        o = builder.load(off[t])
                        src = mv if qtype == _Q4_1 else dwv
                        builder.store(_fma(builder, src, _splat(builder, sx, R), o), off[t])
                    for r in range(R):
                        if qtype == _Q8_0:
                            bx = builder.select(neg[r], builder.sub(zero, xv), xv)
                            d8 = _dot8(builder, aw[r], bx)
                        else:
                            d8 = _dot8(builder, ws[r], xv)
                        f = builder.sitofp(d8, v8f)
                        s = builder.extract_element(scv, ir.Constant(_I32, r))
                        a = builder.load(acc[r][t])
                        builder.store(_fma(builder, f, _splat(builder, s, 8), a), acc[r][t])

            for t in range(TT):
                o = builder.load(off[t]) if off is not None else None
                for r in range(R):
                    s = _hsum8(builder, builder.load(acc[r][t]))
                    if qtype == _Q4_0:
                        s = builder.fsub(s, builder.fmul(
                            ir.Constant(_F32, 8.0),
                            builder.extract_element(o, ir.Constant(_I32, r))))
                    elif qtype == _Q4_1:
                        s = builder.fadd(s, builder.extract_element(o, ir.Constant(_I32, r)))
                    op = builder.add(builder.add(oo_, builder.mul(ost_, c(t))), c(r))
                    builder.store(s, _flat_ptr(context, builder, ta[12], out_, op, _F32))
            return context.get_dummy_value()

        return sig, codegen

    return tile



@intrinsic
def f32_at(typingctx, data, p):
    """The float32 stored little-endian at bytes data[p:p+4] of a 1-D uint8 array (an
    unaligned load; used instead of ``.view``, whose numba implementation costs start-up
    time when a cached kernel is loaded)."""
    if not (isinstance(data, types.Array) and data.ndim == 1 and data.dtype == types.uint8):
        return None
    if not isinstance(p, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        arr, idx = args
        idx = context.cast(builder, idx, sig.args[1], types.intp)
        return builder.load(_flat_ptr(context, builder, sig.args[0], arr, idx, _F32), align=1)

    return types.float32(data, p), codegen

# ---------------------------------------------------------------------------------------
# Attention helpers over a float32 or f16 (uint16 bits) cache, 16 lanes at a time:
#   vdot(q, qo, k, ko, n, lut)        = sum_i q[qo+i] * k[ko+i]          (i < n, n % 16 == 0)
#   vaxpy(out, oo, w, v, vo, n, lut)  : out[oo+i] += w * v[vo+i]
# f16 elements are widened with ``fpext`` (vcvtph2ps) where the CPU has F16C, else read
# through the lookup table lut[0, bits]. Flat element offsets, C-contiguous arrays.
# ---------------------------------------------------------------------------------------


def _load16(context, builder, aty, arr, idx, lut_ty, lut):
    v16f = ir.VectorType(_F32, 16)
    if aty.dtype == types.float32:
        return builder.load(_flat_ptr(context, builder, aty, arr, idx, v16f), align=4)
    bits = builder.load(_flat_ptr(context, builder, aty, arr, idx, ir.VectorType(_I16, 16)),
                        align=2)
    if _has_features("f16c"):
        return builder.fpext(builder.bitcast(bits, ir.VectorType(ir.HalfType(), 16)), v16f)
    v = ir.Constant(v16f, ir.Undefined)
    for i in range(16):
        e = builder.zext(builder.extract_element(bits, ir.Constant(_I32, i)), _I64)
        f = builder.load(_flat_ptr(context, builder, lut_ty, lut, e, _F32))
        v = builder.insert_element(v, f, ir.Constant(_I32, i))
    return v


def _kv_ok(a):
    return isinstance(a, types.Array) and a.dtype in (types.float32, types.uint16)


@intrinsic
def vdot(typingctx, q, qo, k, ko, n, lut):
    if not (isinstance(q, types.Array) and q.dtype == types.float32 and _kv_ok(k)):
        return None
    sig = types.float32(q, types.int64, k, types.int64, types.int64, lut)

    def codegen(context, builder, sig, args):
        q_, qo_, k_, ko_, n_, lut_ = args
        ta = sig.args
        v16f = ir.VectorType(_F32, 16)
        acc = cgutils.alloca_once_value(builder, ir.Constant(v16f, None))
        cnt = builder.udiv(n_, ir.Constant(_I64, 16))
        with cgutils.for_range(builder, cnt) as loop:
            i = builder.mul(loop.index, ir.Constant(_I64, 16))
            a = builder.load(_flat_ptr(context, builder, ta[0], q_, builder.add(qo_, i), v16f),
                             align=4)
            b = _load16(context, builder, ta[2], k_, builder.add(ko_, i), ta[5], lut_)
            builder.store(_fma(builder, a, b, builder.load(acc)), acc)
        v = builder.load(acc)
        v16 = ir.VectorType(_I32, 16)
        for width in (8, 4, 2, 1):
            v = builder.fadd(v, builder.shuffle_vector(
                v, v, ir.Constant(v16, [(j + width) % 16 for j in range(16)])))
        return builder.extract_element(v, ir.Constant(_I32, 0))

    return sig, codegen


@intrinsic
def vaxpy(typingctx, out, oo, w, v, vo, n, lut):
    if not (isinstance(out, types.Array) and out.dtype == types.float32 and _kv_ok(v)):
        return None
    sig = types.void(out, types.int64, types.float32, v, types.int64, types.int64, lut)

    def codegen(context, builder, sig, args):
        out_, oo_, w_, v_, vo_, n_, lut_ = args
        ta = sig.args
        v16f = ir.VectorType(_F32, 16)
        wv = _splat(builder, w_, 16)
        cnt = builder.udiv(n_, ir.Constant(_I64, 16))
        with cgutils.for_range(builder, cnt) as loop:
            i = builder.mul(loop.index, ir.Constant(_I64, 16))
            p = _flat_ptr(context, builder, ta[0], out_, builder.add(oo_, i), v16f)
            b = _load16(context, builder, ta[3], v_, builder.add(vo_, i), ta[6], lut_)
            builder.store(_fma(builder, wv, b, builder.load(p, align=4)), p, align=4)
        return context.get_dummy_value()

    return sig, codegen
