"""Bit-exact check of the qassure C kernels on an emulated Cortex-M4 (QEMU mps2-an386).

Random vectors (fixed seed) plus rounding edge cases are generated here, batched into one
record stream, and run through ONE image per rounding flavour (double rounding, and
-DQA_SINGLE_ROUNDING=1). Expected outputs come from the op kernels in toolchain/ops (what the
numpy executor the certificate is computed against runs) where it implements the op with TFLM's
recipe, and from firmware_tests/ref_int8.py otherwise (single-rounding SOFTMAX); PAD, CONCATENATION and tables
against numpy directly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from firmware_tests import harness, ref_int8
from firmware_tests.harness import Payload
from toolchain import arith
from toolchain.ops import add as add_op
from toolchain.ops import conv as conv_op
from toolchain.ops import fully_connected as fc_op
from toolchain.ops import lookup_table as lut_op
from toolchain.ops import mul as mul_op
from toolchain.ops import pooling as pool_op
from toolchain.ops import quantize as quantize_op
from toolchain.ops import reduce as reduce_op
from toolchain.ops import softmax as softmax_op
from toolchain.ops.common import Requant
from toolchain.tflite import ir
from toolchain.tflite import prepare as P

pytestmark = pytest.mark.firmware

ROUNDINGS = ("double", "single")
I32_MIN, I32_MAX = -(2**31), 2**31 - 1
OP = {"srdhm": 1, "rdbpot": 2, "mbqm": 3, "fc": 10, "conv": 11, "dwconv": 12, "avgpool": 13, "maxpool": 14,
      "add": 15, "mul": 16, "pad": 17, "concat": 18, "mean": 19, "lut": 20, "softmax": 21, "requantize": 22}
KERNELS = tuple(OP)


# ---- case generation: each case is (Payload, {rounding: expected int array}) ---------------

def _i8(rng, shape):
    return rng.integers(-128, 128, size=shape, dtype=np.int64)


def _act(rng, zp):
    """Activation range: none, RELU or RELU6-like narrowing of [-128, 127]."""
    kind = rng.integers(0, 3)
    if kind == 0:
        return -128, 127
    if kind == 1:
        return max(-128, zp), 127
    return max(-128, zp), min(127, zp + int(rng.integers(10, 120)))


def _multipliers(rng, n, lo=-14, hi=-4):
    reals = np.exp2(rng.uniform(lo, hi, size=n))
    ms, ss = zip(*(arith.quantize_multiplier(float(r)) for r in reals), strict=True)
    return np.array(ms, dtype=np.int64), np.array(ss, dtype=np.int64)


def _both(f):
    return {r: f(r) for r in ROUNDINGS}


def primitive_cases(rng):
    cases = {"srdhm": [], "rdbpot": [], "mbqm": []}
    # SaturatingRoundingDoublingHighMul: random, ties (a*b = (k + 1/2) * 2^31), INT32_MIN^2.
    a = list(rng.integers(I32_MIN, I32_MAX, size=400, endpoint=True))
    b = list(rng.integers(I32_MIN, I32_MAX, size=400, endpoint=True))
    for k in (1, 3, 5, 7, 2**20 + 1):
        for sa in (1, -1):
            for sb in (1, -1):
                a.append(sa * k)
                b.append(sb * (1 << 30))
    edge = [(I32_MIN, I32_MIN), (I32_MIN, I32_MAX), (I32_MAX, I32_MIN), (I32_MAX, I32_MAX), (I32_MIN, 1),
            (0, I32_MIN), (1, 1), (-1, 1), (I32_MIN, -1)]
    a += [e[0] for e in edge]
    b += [e[1] for e in edge]
    a, b = np.array(a, dtype=np.int64), np.array(b, dtype=np.int64)
    z = np.zeros_like(a)
    exp = arith.saturating_rounding_doubling_high_mul(a, b)
    cases["srdhm"].append((Payload(OP["srdhm"]).i32(len(a)).i32s(a).i32s(b).i32s(z), _both(lambda r: exp)))

    # RoundingDivideByPOT: exponents 0..31, exact ties of both signs, extremes.
    x = list(rng.integers(I32_MIN, I32_MAX, size=400, endpoint=True))
    e = list(rng.integers(0, 32, size=400))
    for ex in range(1, 31):
        for k in (0, 1, 2, -1, -2, 5):
            v = (2 * k + 1) * (1 << (ex - 1))
            if I32_MIN <= v <= I32_MAX:
                x.append(v)
                e.append(ex)
    for xv in (I32_MIN, I32_MAX, -1, 1, 0):
        for ex in (0, 1, 30, 31):
            x.append(xv)
            e.append(ex)
    x, e = np.array(x, dtype=np.int64), np.array(e, dtype=np.int64)
    exp = arith.rounding_divide_by_pot(x, e)
    cases["rdbpot"].append((Payload(OP["rdbpot"]).i32(len(x)).i32s(x).i32s(np.zeros_like(x)).i32s(e),
                            _both(lambda r: exp)))

    # MultiplyByQuantizedMultiplier: shifts of both signs (-31..30), M in [2^30, 2^31), x kept
    # where x * 2^max(shift,0) fits int32 (the C left shift is an int32 product); ties.
    shift = rng.integers(-31, 31, size=600)
    m = rng.integers(1 << 30, I32_MAX, size=600, endpoint=True)
    lim = np.exp2(31 - np.maximum(shift, 0)).astype(np.int64) - 1
    x = (rng.uniform(-1, 1, size=600) * lim).astype(np.int64)
    extra = [(1 << 30, 0, v) for v in (1, -1, 3, -3, 5, -5)]              # x/2 ties
    extra += [(1 << 30, -1, v) for v in (2, -2, 6, -6, 10, -10)]          # x/4 ties
    extra += [(1 << 30, -20, v * (1 << 20)) for v in (1, -1, 3, -3)]     # deep right shift
    extra += [(I32_MAX, 0, I32_MIN), (I32_MAX, 0, I32_MAX), (1 << 30, 1, I32_MIN // 2),
              (I32_MAX, -31, I32_MAX), (I32_MAX, 30, 1), (I32_MAX, 30, -1), (1 << 30, -31, I32_MIN)]
    m = np.concatenate([m, [t[0] for t in extra]]).astype(np.int64)
    shift = np.concatenate([shift, [t[1] for t in extra]]).astype(np.int64)
    x = np.concatenate([x, [t[2] for t in extra]]).astype(np.int64)
    cases["mbqm"].append((Payload(OP["mbqm"]).i32(len(x)).i32s(x).i32s(m).i32s(shift),
                          _both(lambda r: arith.multiply_by_quantized_multiplier(x, m, shift, r))))
    return cases


def fc_cases(rng, n=40):
    out = []
    for i in range(n):
        batches, n_in, n_out = int(rng.integers(1, 4)), int(rng.integers(1, 40)), int(rng.integers(1, 20))
        per_channel = bool(i % 2)
        zp_in, zp_out = int(rng.integers(-128, 128)), int(rng.integers(-128, 128))
        lo, hi = _act(rng, zp_out)
        mult, shift = _multipliers(rng, n_out if per_channel else 1, -12 if i % 5 else -3, -3 if i % 5 else 2)
        w = rng.integers(-127, 128, size=(n_out, n_in))
        bias = rng.integers(-5000, 5000, size=n_out) if i % 3 else np.zeros(n_out, dtype=np.int64)
        x = _i8(rng, (batches, n_in))
        p = fc_op.FullyConnected(-zp_in, w, bias, Requant(mult, shift, zp_out, lo, hi), per_channel)
        pl = (Payload(OP["fc"]).i32(-zp_in, 0, zp_out, lo, hi, batches, n_in, n_out, int(per_channel))
              .i32s(mult).i32s(shift).i32(int(i % 3 != 0)))
        if i % 3:
            pl.i32s(bias)
        pl.i8s(w).i8s(x)
        out.append((pl, _both(lambda r, p=p, x=x, b=batches, o=n_out:
                              fc_op.fully_connected(x[None], p, (b, o), r))))
    return out


def _out_size(size, filt, stride, dil, pad_total):
    return (size + pad_total - ((filt - 1) * dil + 1)) // stride + 1


def conv_cases(rng, depthwise: bool, n=30):
    out = []
    for i in range(n):
        nb = int(rng.integers(1, 3))
        h, w = int(rng.integers(3, 9)), int(rng.integers(3, 9))
        cin = int(rng.integers(1, 6))
        mult_d = int(rng.integers(1, 3)) if depthwise else 1
        cout = cin * mult_d if depthwise else int(rng.integers(1, 7))
        kh, kw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        sh, sw = int(rng.integers(1, 3)), int(rng.integers(1, 3))
        dh, dw = (int(rng.integers(1, 3)), int(rng.integers(1, 3))) if i % 4 == 3 else (1, 1)
        same = bool(i % 2)
        if same:
            oh, ow = -(-h // sh), -(-w // sw)
            ph = max(0, ((oh - 1) * sh + (kh - 1) * dh + 1 - h) // 2)
            pw = max(0, ((ow - 1) * sw + (kw - 1) * dw + 1 - w) // 2)
        else:
            ph = pw = 0
            oh, ow = _out_size(h, kh, sh, dh, 0), _out_size(w, kw, sw, dw, 0)
        if oh < 1 or ow < 1:
            continue
        zp_in, zp_out = int(rng.integers(-128, 128)), int(rng.integers(-128, 128))
        lo, hi = _act(rng, zp_out)
        mult, shift = _multipliers(rng, cout, -12, -4)
        wshape = (1, kh, kw, cout) if depthwise else (cout, kh, kw, cin)
        wt = rng.integers(-127, 128, size=wshape)
        has_bias = i % 3 != 0
        bias = rng.integers(-20000, 20000, size=cout) if has_bias else np.zeros(cout, dtype=np.int64)
        x = _i8(rng, (nb, 1, h, w, cin))
        p = conv_op.Conv(depthwise, -zp_in, wt, bias, Requant(mult, shift, zp_out, lo, hi), (sh, sw),
                         (dh, dw),
                   (ph, pw), (oh, ow), mult_d, True)
        pl = Payload(OP["dwconv" if depthwise else "conv"])
        pl.i32(-zp_in, zp_out, lo, hi, sh, sw, dh, dw, ph, pw)
        pl.i32(mult_d if depthwise else cin, nb, h, w, cin, kh, kw, oh, ow, cout)  # depth mult. | filter_c
        pl.i32s(mult).i32s(shift).i32(int(has_bias))
        if has_bias:
            pl.i32s(bias)
        pl.i8s(wt).i8s(x)
        out.append((pl, _both(lambda r, p=p, x=x: conv_op.conv(x, p, r))))
    return out


def pool_cases(rng, average: bool, n=30):
    out = []
    for i in range(n):
        nb, h, w = int(rng.integers(1, 3)), int(rng.integers(2, 9)), int(rng.integers(2, 9))
        c = int(rng.integers(1, 5))
        fh, fw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        sh, sw = int(rng.integers(1, 3)), int(rng.integers(1, 3))
        if i % 2:
            oh, ow = -(-h // sh), -(-w // sw)
            ph, pw = max(0, ((oh - 1) * sh + fh - h) // 2), max(0, ((ow - 1) * sw + fw - w) // 2)
        else:
            ph = pw = 0
            oh, ow = (h - fh) // sh + 1, (w - fw) // sw + 1
        if oh < 1 or ow < 1:
            continue
        lo, hi = _act(rng, int(rng.integers(-128, 0)))
        x = _i8(rng, (nb, 1, h, w, c))
        if i % 7 == 0:  # many exact .5 averages: two-element windows of odd sums
            x = rng.choice([-3, -1, 0, 1, 3], size=x.shape)
        p = pool_op.Pool(average, (fh, fw), (sh, sw), (ph, pw), (oh, ow), lo, hi)
        pl = Payload(OP["avgpool" if average else "maxpool"])
        pl.i32(sh, sw, fh, fw, ph, pw, lo, hi, nb, h, w, c, oh, ow)
        pl.i8s(x)
        out.append((pl, _both(lambda r, p=p, x=x: pool_op.pool(x, p))))
    return out


def _elementwise_cases(rng, n, make):
    """ADD / MUL: random sizes, scales and zero points; `make` turns them into (record, Payload header)."""
    out = []
    for i in range(n):
        size = int(rng.integers(1, 200))
        s1, s2 = math.exp(rng.uniform(-6, 0)), math.exp(rng.uniform(-6, 0))
        z1, z2, zo = (int(v) for v in rng.integers(-128, 128, size=3))
        p, pl, run = make(i, s1, s2, z1, z2, zo)
        a, b = _i8(rng, size), _i8(rng, size)
        pl.i32(size).i8s(a).i8s(b)
        out.append((pl, _both(lambda r, p=p, a=a, b=b, run=run: run(a, b, p, r))))
    return out


def add_cases(rng, n=30):
    def make(i, s1, s2, z1, z2, zo):
        # some saturate
        so = max(s1, s2) * math.exp(rng.uniform(-0.5, 2.0) if i % 4 else rng.uniform(-3.0, -1.5))
        twice = 2 * max(s1, s2)
        m1, e1 = arith.quantize_multiplier(s1 / twice)
        m2, e2 = arith.quantize_multiplier(s2 / twice)
        mo, eo = arith.quantize_multiplier(twice / ((1 << 20) * so))
        lo, hi = _act(rng, zo)
        pl = Payload(OP["add"]).i32(-z1, -z2, zo, 20, m1, e1, m2, e2, mo, eo, lo, hi)
        return add_op.Add(20, -z1, -z2, m1, e1, m2, e2, mo, eo, zo, lo, hi), pl, add_op.add

    return _elementwise_cases(rng, n, make)


def mul_cases(rng, n=30):
    def make(i, s1, s2, z1, z2, zo):
        so = s1 * s2 * math.exp(rng.uniform(2, 9) if i % 4 else rng.uniform(-2, 2))
        mo, eo = arith.quantize_multiplier(s1 * s2 / so)
        lo, hi = _act(rng, zo)
        pl = Payload(OP["mul"]).i32(-z1, -z2, zo, mo, eo, lo, hi)
        return mul_op.Mul(-z1, -z2, mo, eo, zo, lo, hi), pl, mul_op.mul

    return _elementwise_cases(rng, n, make)


def pad_cases(rng, n=15):
    out = []
    for _ in range(n):
        dims = [int(v) for v in rng.integers(1, 5, size=4)]
        before = [int(v) for v in rng.integers(0, 3, size=4)]
        after = [int(v) for v in rng.integers(0, 3, size=4)]
        pv = int(rng.integers(-128, 128))
        x = _i8(rng, dims)
        exp = np.pad(x, list(zip(before, after, strict=True)), constant_values=pv)
        pl = Payload(OP["pad"]).i32(*dims).i32(*before).i32(*after).i32(pv).i8s(x)
        out.append((pl, _both(lambda r, e=exp: e)))
    return out


def concat_cases(rng, n=15):
    out = []
    for _ in range(n):
        k, outer = int(rng.integers(1, 5)), int(rng.integers(1, 10))
        sizes = [int(v) for v in rng.integers(1, 9, size=k)]
        xs = [_i8(rng, (outer, s)) for s in sizes]
        pl = Payload(OP["concat"]).i32(k, outer).i32s(sizes)
        for x in xs:
            pl.i8s(x)
        exp = np.concatenate(xs, axis=-1)
        out.append((pl, _both(lambda r, e=exp: e)))
    return out


def _prepared(opcode, x_shape, out_shape, s_in, zp_in, s_out, zp_out, const=None, options=None):
    """prepare.prepare_op on a one-op graph: the record the executor and emit-c would use."""
    q = lambda s, z: ir.Quantization(np.array([s], np.float32), np.array([z], np.int64))  # noqa: E731
    tensors = [ir.Tensor(0, "x", tuple(x_shape), "int8", q(s_in, zp_in), None),
               ir.Tensor(1, "y", tuple(out_shape), "int8", q(s_out, zp_out), None)]
    inputs = (0,)
    if const is not None:
        tensors.append(ir.Tensor(2, "c", const.shape, "int32", None, const))
        inputs = (0, 2)
    op = ir.Operator(0, opcode, inputs, (1,), options or ir.NoOptions())
    graph = ir.Graph(None, tuple(tensors), (op,), (0,), (1,))
    return P.prepare_op(graph, op, "double")


def _scales(rng, i):
    zi, zo = int(rng.integers(-128, 128)), int(rng.integers(-128, 128))
    si = float(np.float32(math.exp(rng.uniform(-6, 0))))
    so = float(np.float32(si * math.exp(rng.uniform(-1.5, 1.5) if i % 5 else rng.uniform(-6, -3))))
    return si, zi, so, zo


def mean_cases(rng, n=40):
    """MEAN over random axes of rank-4 tensors, against toolchain.ops.reduce.mean with the
    prepared record (reduce.h QuantizedMeanOrSum: one MBQM with 1/count folded in)."""
    out = []
    for i in range(n):
        dims = [int(rng.integers(1, 3))] + [int(v) for v in rng.integers(1, 8, size=3)]
        if i % 3 == 0:
            axes = (1, 2)
        else:
            axes = tuple(sorted({int(a) for a in rng.choice(4, size=int(rng.integers(1, 4)))}))
        si, zi, so, zo = _scales(rng, i)
        out_shape = tuple(1 if a in axes else d for a, d in enumerate(dims))
        p = _prepared("MEAN", dims, out_shape, si, zi, so, zo, np.array(axes, np.int32),
                      ir.ReducerOptions(True))
        x = _i8(rng, dims)
        if i % 7 == 0:
            x[:] = rng.choice([-128, 127])  # saturating sums
        reduced = [int(a in p.axes) for a in range(4)]
        pl = Payload(OP["mean"]).i32(*dims).i32(*reduced)
        pl.i32(p.input_zero_point, p.count, p.multiplier, p.shift, p.output_offset).i8s(x)
        out.append((pl, _both(lambda r, p=p, x=x, o=out_shape: reduce_op.mean(x[None], p, o, r))))
    return out


def requantize_cases(rng, n=20):
    """QUANTIZE int8 -> int8 (reference_ops::Requantize) against toolchain.ops.quantize.requantize."""
    out = []
    for i in range(n):
        size = int(rng.integers(1, 300))
        si, zi, so, zo = _scales(rng, i)
        p = _prepared("QUANTIZE", (size,), (size,), si, zi, so, zo)
        x = _i8(rng, size)
        pl = Payload(OP["requantize"])
        pl.i32(p.input_zero_point, p.zero_point, p.multiplier, p.shift, size).i8s(x)
        out.append((pl, _both(lambda r, p=p, x=x: quantize_op.requantize(x, p, r))))
    return out


def lut_cases(rng, n=4):
    """Random tables, plus TFLM LOGISTIC / TANH tables from toolchain.ops.lookup_table."""
    tables = [_i8(rng, 256) for _ in range(n)]
    for _ in range(3):
        scale, zp = float(np.float32(math.exp(rng.uniform(-5, -1)))), int(rng.integers(-128, 128))
        tables.append(lut_op.logistic_table(lut_op.activation_params(scale, zp)).astype(np.int64))
        tables.append(lut_op.tanh_table(lut_op.activation_params(scale, zp)).astype(np.int64))
    out = []
    for table in tables:
        x = np.concatenate([np.arange(-128, 128), _i8(rng, 100)])
        pl = Payload(OP["lut"]).i32(len(x)).i8s(table).i8s(x)
        out.append((pl, _both(lambda r, t=table, x=x: t[x + 128])))
    return out


def softmax_cases(rng, n=25):
    """Double rounding: toolchain.ops.softmax.softmax_int8 (checked against tflite-micro by
    tests/test_fixedpoint.py). Single rounding: ref_int8.softmax_tflm (TFLITE_SINGLE_ROUNDING's
    MultiplyByQuantizedMultiplierGreaterThanOne); rows on which TFLM aborts are not generated."""
    out = []
    for i in range(n):
        rows, depth = int(rng.integers(1, 5)), int(rng.integers(1, 20))
        s_in = float(np.float32(math.exp(rng.uniform(-5, 0.5))))
        p = softmax_op.softmax_params(s_in)
        x = _i8(rng, (rows, depth)).astype(np.int8)
        if i % 5 == 0:
            x[:, :] = x[:, :1]  # all equal: ties everywhere
        if softmax_op.softmax_int8_aborts(x, p).any():
            continue
        pl = Payload(OP["softmax"])
        pl.i32(rows, depth, p.input_multiplier, p.input_left_shift, p.diff_min).i8s(x)
        single = ref_int8.softmax_tflm(x, p.input_multiplier, p.input_left_shift, p.diff_min, True)
        out.append((pl, {"double": softmax_op.softmax_int8(x, p), "single": single}))
    return out


def all_cases():
    rng = np.random.default_rng(20240611)
    cases = primitive_cases(rng)
    cases["fc"] = fc_cases(rng)
    cases["conv"] = conv_cases(rng, False)
    cases["dwconv"] = conv_cases(rng, True)
    cases["avgpool"] = pool_cases(rng, True)
    cases["maxpool"] = pool_cases(rng, False)
    cases["add"] = add_cases(rng)
    cases["mul"] = mul_cases(rng)
    cases["pad"] = pad_cases(rng)
    cases["concat"] = concat_cases(rng)
    cases["mean"] = mean_cases(rng)
    cases["requantize"] = requantize_cases(rng)
    cases["lut"] = lut_cases(rng)
    cases["softmax"] = softmax_cases(rng)
    return cases


# ---- one QEMU run per rounding flavour ------------------------------------------------------

@pytest.fixture(scope="module")
def qemu_results(firmware_toolchain, tmp_path_factory):
    cases = all_cases()
    order = [(k, c) for k in KERNELS for c in cases[k]]
    stream = harness.encode_records(pl for _, (pl, _) in order)
    results = {}
    for rounding in ROUNDINGS:
        defines = ("QA_SINGLE_ROUNDING=1",) if rounding == "single" else ()
        elf = harness.build_image([harness.RUNNER_C], tmp_path_factory.mktemp(f"fw_{rounding}"),
                                  "kernel_runner", defines)
        run = harness.run_image(elf, stream)
        assert len(run.outputs) == len(order), "image returned a different number of records"
        per_kernel: dict[str, list] = {k: [] for k in KERNELS}
        for (kernel, (pl, expected)), (op, raw) in zip(order, run.outputs, strict=True):
            assert op == pl.op
            dtype = "<i4" if kernel in ("srdhm", "rdbpot", "mbqm") else np.int8
            want = np.asarray(expected[rounding]).reshape(-1)
            per_kernel[kernel].append((np.frombuffer(raw, dtype=dtype), want))
        results[rounding] = {"kernels": per_kernel, "seconds": run.seconds, "records": len(order),
                             "size": harness.size_of(elf)}
        print(f"\n[{rounding}] {len(order)} records in one QEMU run: {run.seconds:.2f} s\n"
              f"{results[rounding]['size']}")
    return results


@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel_bit_exact(qemu_results, kernel, rounding):
    pairs = qemu_results[rounding]["kernels"][kernel]
    assert pairs, f"no vectors for {kernel}"
    n_values = 0
    for i, (got, expected) in enumerate(pairs):
        assert got.shape == expected.shape, f"{kernel} case {i}: shape {got.shape} != {expected.shape}"
        bad = np.flatnonzero(got.astype(np.int64) != expected.astype(np.int64))
        assert bad.size == 0, (f"{kernel} case {i} ({rounding}): {bad.size} of {got.size} differ, "
                               f"first at {bad[0]}: device {got[bad[0]]} vs reference {expected[bad[0]]}")
        n_values += got.size
    print(f"{kernel}/{rounding}: {len(pairs)} cases, {n_values} values bit-exact")


def test_softmax_reference_matches_executor():
    """ref_int8.softmax_tflm (used for single rounding) agrees with toolchain.ops.softmax's
    TFLM-verified softmax_int8 in the double-rounding build."""
    rng = np.random.default_rng(5)
    for _ in range(40):
        p = softmax_op.softmax_params(float(np.float32(math.exp(rng.uniform(-5, 0.5)))))
        x = _i8(rng, (3, int(rng.integers(1, 16)))).astype(np.int8)
        if softmax_op.softmax_int8_aborts(x, p).any():
            continue
        want = softmax_op.softmax_int8(x, p)
        got = ref_int8.softmax_tflm(x, p.input_multiplier, p.input_left_shift, p.diff_min, False)
        np.testing.assert_array_equal(got, want)


def test_vectors_reach_saturation():
    """The random ADD / MUL / FC vectors do exercise the clamps at -128 and 127."""
    cases = all_cases()
    for kernel in ("add", "mul", "fc"):
        values = np.concatenate([np.asarray(e["double"]).reshape(-1) for _, e in cases[kernel]])
        assert (values == -128).any() and (values == 127).any(), kernel


def test_compile_other_cores(firmware_toolchain):
    """The kernel library compiles warning-free for Cortex-M7 (double-precision FPU) and M55."""
    src = harness.C_RUNTIME / "qassure_kernels.c"
    ok, info = harness.compile_only(src, ("-mcpu=cortex-m7", "-mthumb", "-mfpu=fpv5-d16", "-mfloat-abi=hard"))
    assert ok, info
    print("cortex-m7:\n" + info)
    ok55, info55 = harness.compile_only(src, ("-mcpu=cortex-m55", "-mthumb", "-mfloat-abi=hard"))
    if not ok55 and "cortex-m55" in info55 and ("unrecognized" in info55 or "bad value" in info55):
        pytest.skip(f"installed gcc does not know cortex-m55: {info55.strip()}")
    assert ok55, info55
    print("cortex-m55:\n" + info55)
