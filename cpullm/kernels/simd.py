"""Quantized products written as LLVM vector IR (numba intrinsics).

LLVM does not find the int8 dot product in plain numba loops (numba widens int32
arithmetic to int64, so the loops compile to scalar ``imul``). These intrinsics state
the block products directly as vectors: ``vpdpbusd`` (u8 x s8 -> i32, AVX512-VNNI /
AVX-VNNI) where the CPU has it, else a widened multiply that the back end turns into
``vpmaddwd`` (AVX2) or plain SIMD. Tiles for decode (:func:`make_tile`) and prefill
(:func:`make_tile8`), f32/f16 attention helpers (:func:`vdot`, :func:`vaxpy`) and an
unaligned float load (:func:`f32_at`). Offsets are element indices and are not
bounds-checked.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_I8 = ir.IntType(8)
_I32 = ir.IntType(32)


def _reduce_add(builder, v):
    fnty = ir.FunctionType(_I32, [v.type])
    fn = cgutils.get_or_insert_function(
        builder.module, fnty, f"llvm.vector.reduce.add.v{v.type.count}i32"
    )
    return builder.call(fn, [v])


# ---------------------------------------------------------------------------------------
# Decode tiles: R weight rows x one token over all blocks of a row; one float
# accumulator vector whose lanes are the R rows.
#
#   tile(data, p0, rb, nblk, x, xd, xs, lut, out, oo)
#
# weight row r (r < R) starts at byte p0 + r*rb of ``data``; the token's int8 activations
# are ``x``, its block scales / block sums ``xd`` / ``xs``; the result of row r goes to
# out[oo + r]. Arrays are C-contiguous, offsets are not checked.
#
# Per block: each weight block is unpacked once into 32 unsigned bytes (Q4 nibbles; Q8_0
# as w + 128) and dotted with the TT activation blocks by ``vpdpbusd`` (u8 x s8 -> 8 x i32)
# where the CPU has AVX512-VNNI/AVX-VNNI, else by a widened multiply; the 8 lanes are
# summed exactly (integers) and :func:`_block_update` applies the scales. That update is
# shared with the 8-token tiles below, so decode and prefill give bit-identical logits.
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


def _rows_sum(builder, vs):
    """R (1, 4 or 8) vectors of 8 x i32 -> one R x i32 vector of their lane sums (exact),
    by shuffle-and-add steps that sum several rows at once."""
    v4i = ir.VectorType(_I32, 4)
    v8i = ir.VectorType(_I32, 8)
    if len(vs) == 1:
        return builder.insert_element(ir.Constant(ir.VectorType(_I32, 1), None),
                                      _reduce_add(builder, vs[0]), ir.Constant(_I32, 0))

    def step(a, b_, x_idx, y_idx):
        x = builder.shuffle_vector(a, b_, ir.Constant(v8i, x_idx))
        y = builder.shuffle_vector(a, b_, ir.Constant(v8i, y_idx))
        return builder.add(x, y)

    # rows a, b -> [a0+a2, a1+a3, b0+b2, b1+b3, a4+a6, a5+a7, b4+b6, b5+b7]
    pair = ([0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15])
    # two such -> [a_lo, b_lo, c_lo, d_lo, a_hi, b_hi, c_hi, d_hi]
    quad = ([0, 2, 8, 10, 4, 6, 12, 14], [1, 3, 9, 11, 5, 7, 13, 15])
    zs = []
    for k in range(0, len(vs), 4):
        ab = step(vs[k], vs[k + 1], *pair)
        cd = step(vs[k + 2], vs[k + 3], *pair)
        zs.append(step(ab, cd, *quad))
    if len(zs) == 2:  # 8 rows: [a..h]
        return step(zs[0], zs[1], [0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15])
    z = zs[0]
    lo = builder.shuffle_vector(z, z, ir.Constant(v4i, [0, 1, 2, 3]))
    hi = builder.shuffle_vector(z, z, ir.Constant(v4i, [4, 5, 6, 7]))
    return builder.add(lo, hi)


def _store_out(context, builder, aty, out, oo, ost, t, r, v):
    """out[oo + t*ost + r] = v (the result of row r for token t)."""
    op = builder.add(builder.add(oo, builder.mul(ost, ir.Constant(_I64, t))),
                     ir.Constant(_I64, r))
    builder.store(v, _flat_ptr(context, builder, aty, out, op, _F32))


def _block_update(builder, qtype, acc, idot, dx, sxo, sx, dw, m):
    """acc += the block's contribution, from its exact integer dot ``idot`` (unsigned
    weights: Q4 nibbles, or Q8_0's w + 128). Every tile does exactly these float
    operations in this order, so a token's logits do not depend on which tile (decode,
    4-token or 8-token prefill) computed them. Vectors of one length n: acc, idot, dx,
    sxo (= bias * sx for Q4_0 / Q8_0), sx, dw, m (Q4_1's offsets)."""
    f = builder.fmul(builder.sitofp(idot, ir.VectorType(_F32, idot.type.count)), dx)
    if qtype == _Q4_1:
        return _fma(builder, sx, m, _fma(builder, f, dw, acc))
    return _fma(builder, builder.fsub(f, sxo), dw, acc)


# offset that makes the weights unsigned for vpdpbusd; the block sums of x take it back
_BIAS = {_Q4_0: 8.0, _Q8_0: 128.0}


def make_tile(qtype, R):
    """An intrinsic computing R rows of a Q4_0/Q4_1/Q8_0 product with one token."""
    bsz = {_Q4_0: 18, _Q4_1: 20, _Q8_0: 34}[qtype]
    qoff = bsz - (32 if qtype == _Q8_0 else 16)

    @intrinsic
    def tile(typingctx, data, p0, rb, nblk, x, xd, xs, lut, out, oo):
        if not (isinstance(data, types.Array) and data.dtype == types.uint8
                and isinstance(x, types.Array) and x.dtype == types.int8
                and isinstance(out, types.Array) and out.dtype == types.float32):
            return None
        i64 = types.int64
        sig = types.void(data, i64, i64, i64, x, xd, xs, lut, out, i64)

        def codegen(context, builder, sig, args):
            data_, p0_, rb_, nblk_, x_, xd_, xs_, lut_, out_, oo_ = args
            ta = sig.args
            p0_, rb_, nblk_, oo_ = (
                context.cast(builder, v, ty, types.int64)
                for v, ty in ((p0_, ta[1]), (rb_, ta[2]), (nblk_, ta[3]), (oo_, ta[9]))
            )
            vRf = ir.VectorType(_F32, R)
            v16 = ir.VectorType(_I8, 16)
            v32 = ir.VectorType(_I8, 32)
            c = lambda v: ir.Constant(_I64, v)  # noqa: E731
            acc = cgutils.alloca_once_value(builder, ir.Constant(vRf, None))  # lanes: rows

            def half_at(p):
                bits = builder.load(_flat_ptr(context, builder, ta[0], data_, p, _I16), align=1)
                idx = builder.zext(bits, _I64)
                return builder.load(_flat_ptr(context, builder, ta[7], lut_, idx, _F32))

            def rows_vec(vals):
                v = ir.Constant(vRf, ir.Undefined)
                for r, x in enumerate(vals):
                    v = builder.insert_element(v, x, ir.Constant(_I32, r))
                return v

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
                        w = builder.load(_flat_ptr(context, builder, ta[0], data_, wp, v32),
                                         align=1)
                        ws.append(builder.xor(w, ir.Constant(v32, [-128] * 32)))
                    else:
                        w = builder.load(_flat_ptr(context, builder, ta[0], data_, wp, v16),
                                         align=1)
                        lo = builder.and_(w, ir.Constant(v16, [15] * 16))
                        hi = builder.lshr(w, ir.Constant(v16, [4] * 16))
                        ws.append(builder.shuffle_vector(
                            lo, hi, ir.Constant(ir.VectorType(_I32, 32), list(range(32)))))
                xv = builder.load(_flat_ptr(context, builder, ta[4], x_, builder.mul(b, c(32)),
                                            v32), align=1)
                dx = builder.load(_flat_ptr(context, builder, ta[5], xd_, b, _F32))
                sx = builder.load(_flat_ptr(context, builder, ta[6], xs_, b, _F32))
                sxo = None
                if qtype != _Q4_1:
                    sxo = _splat(builder, builder.fmul(sx, ir.Constant(_F32, _BIAS[qtype])), R)
                idot = _rows_sum(builder, [_dot8(builder, ws[r], xv) for r in range(R)])
                a = _block_update(builder, qtype, builder.load(acc), idot, _splat(builder, dx, R),
                                  sxo, _splat(builder, sx, R), rows_vec(dws),
                                  rows_vec(ms) if qtype == _Q4_1 else None)
                builder.store(a, acc)

            a = builder.load(acc)
            for r in range(R):
                _store_out(context, builder, ta[8], out_, oo_, c(0), 0, r,
                           builder.extract_element(a, ir.Constant(_I32, r)))
            return context.get_dummy_value()

        return sig, codegen

    return tile


# ---------------------------------------------------------------------------------------
# Prefill tiles with the 8 tokens in the vector lanes (Q4_0 / Q4_1 / Q8_0 weights).
#
# The activations of 8 tokens are first interleaved (quant.interleave8): for block b and
# 4-byte group G (activations 4G..4G+3 of the block), one 32-byte vector holds that group
# for tokens 0..7. A Q4 block's 16 bytes are 4 dwords; dword g's low nibbles are weights
# 4g..4g+3 and its high nibbles weights 16+4g..16+4g+3, i.e. groups g and 4+g. Each
# weight dword is broadcast to all 8 lanes and ``vpdpbusd`` accumulates it against the
# 8 tokens' group: 8 instructions give the block's integer dot for 8 tokens at once, and
# (Q8_0: dword G of the block is weights 4G..4G+3, made unsigned by +128, which the block
# sums of x take back out, as they do Q4_0's -8),
# the scales are applied once per (row, block) for 8 tokens as vectors, instead of a
# convert + multiply-add per (row, token, block) as in the tiles above.
#
#   xi[xo + b*256 + G*32 + t*4 + k] = q(token t, activation 4G+k of block b)
#   dx[do + b*8 + t], sx[do + b*8 + t]  = scale and block sum of token t, block b
#   out[oo + t*ost + r] = row r . token t          (t < nt, r < R)
# ---------------------------------------------------------------------------------------


def _dpbusd(builder, acc, a, b):
    """acc (8 x i32) + per lane the 4 products of u8 a and s8 b (both 8 x i32 vectors)."""
    v8 = ir.VectorType(_I32, 8)
    if _vnni():
        fnty = ir.FunctionType(v8, [v8, v8, v8])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.x86.avx512.vpdpbusd.256")
        return builder.call(fn, [acc, a, b])
    v32 = ir.VectorType(_I8, 32)
    return builder.add(acc, _dot8(builder, builder.bitcast(a, v32), builder.bitcast(b, v32)))


def make_tile8(qtype, R):
    """An intrinsic computing an R-rows x 8-tokens tile of a Q4_0/Q4_1/Q8_0 product from
    interleaved activations (see above)."""
    bsz = {_Q4_0: 18, _Q4_1: 20, _Q8_0: 34}[qtype]
    qoff = 2 if qtype == _Q8_0 else bsz - 16

    @intrinsic
    def tile8(typingctx, data, p0, rb, nblk, xi, xo, dx, sx, do, lut, out, oo, ost, nt):
        if not (isinstance(data, types.Array) and data.dtype == types.uint8
                and isinstance(xi, types.Array) and xi.dtype == types.int8
                and isinstance(out, types.Array) and out.dtype == types.float32):
            return None
        i64 = types.int64
        sig = types.void(data, i64, i64, i64, xi, i64, dx, sx, i64, lut, out, i64, i64, i64)

        def codegen(context, builder, sig, args):
            (data_, p0_, rb_, nblk_, xi_, xo_, dx_, sx_, do_, lut_, out_, oo_, ost_,
             nt_) = args
            ta = sig.args
            p0_, rb_, nblk_, xo_, do_, oo_, ost_, nt_ = (
                context.cast(builder, v, ty, types.int64)
                for v, ty in ((p0_, ta[1]), (rb_, ta[2]), (nblk_, ta[3]), (xo_, ta[5]),
                              (do_, ta[8]), (oo_, ta[11]), (ost_, ta[12]), (nt_, ta[13]))
            )
            v8f = ir.VectorType(_F32, 8)
            v8i = ir.VectorType(_I32, 8)
            v4i = ir.VectorType(_I32, 4)
            c = lambda v: ir.Constant(_I64, v)  # noqa: E731
            acc = [cgutils.alloca_once_value(builder, ir.Constant(v8f, None)) for _ in range(R)]
            nib = ir.Constant(v4i, [0x0F0F0F0F] * 4)

            def half_at(p):
                bits = builder.load(_flat_ptr(context, builder, ta[0], data_, p, _I16), align=1)
                idx = builder.zext(bits, _I64)
                return builder.load(_flat_ptr(context, builder, ta[9], lut_, idx, _F32))

            with cgutils.for_range(builder, nblk_) as loop:
                b = loop.index
                pb = builder.add(p0_, builder.mul(b, c(bsz)))
                xb = builder.add(xo_, builder.mul(b, c(256)))
                xv = [builder.load(_flat_ptr(context, builder, ta[4], xi_,
                                             builder.add(xb, c(32 * g)), v8i), align=1)
                      for g in range(8)]
                db = builder.add(do_, builder.mul(b, c(8)))
                dxv = builder.load(_flat_ptr(context, builder, ta[6], dx_, db, v8f), align=4)
                sxv = builder.load(_flat_ptr(context, builder, ta[7], sx_, db, v8f), align=4)
                sxo = None
                if qtype != _Q4_1:  # the unsigned weights' offset: 8 (Q4_0) or 128 (Q8_0)
                    sxo = builder.fmul(sxv, ir.Constant(v8f, [_BIAS[qtype]] * 8))
                for r in range(R):
                    pr = builder.add(pb, builder.mul(rb_, c(r))) if r else pb
                    wp = builder.add(pr, c(qoff))
                    if qtype == _Q8_0:
                        # signed weights w -> unsigned w + 128 (vpdpbusd's u8 side)
                        raw = builder.load(_flat_ptr(context, builder, ta[0], data_, wp, v8i),
                                           align=1)
                        w8 = builder.xor(raw, ir.Constant(v8i, [-0x7F7F7F80] * 8))
                        srcs = [(w8, g) for g in range(8)]
                    else:
                        raw = builder.load(_flat_ptr(context, builder, ta[0], data_, wp, v4i),
                                           align=1)
                        lo = builder.and_(raw, nib)
                        hi = builder.and_(builder.lshr(raw, ir.Constant(v4i, [4] * 4)), nib)
                        srcs = [(lo if g < 4 else hi, g % 4) for g in range(8)]
                    dot = ir.Constant(v8i, None)
                    for g, (h, lane) in enumerate(srcs):
                        wb = builder.shuffle_vector(h, h, ir.Constant(v8i, [lane] * 8))
                        dot = _dpbusd(builder, dot, wb, xv[g])
                    m = None
                    if qtype == _Q4_1:
                        m = _splat(builder, half_at(builder.add(pr, c(2))), 8)
                    a = _block_update(builder, qtype, builder.load(acc[r]), dot, dxv, sxo, sxv,
                                      _splat(builder, half_at(pr), 8), m)
                    builder.store(a, acc[r])

            for r in range(R):
                a = builder.load(acc[r])
                for t in range(8):
                    keep = builder.icmp_signed("<", c(t), nt_)
                    with builder.if_then(keep, likely=True):
                        _store_out(context, builder, ta[10], out_, oo_, ost_, t, r,
                                   builder.extract_element(a, ir.Constant(_I32, t)))
            return context.get_dummy_value()

        return sig, codegen

    return tile8


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
