"""toolchain.fixedpoint (gemmlowp fixed point, on toolchain.arith's primitives): hand-worked cases,
and the int8 SOFTMAX / LOGISTIC / TANH recipes built on it (toolchain/ops/softmax.py,
lookup_table.py) checked bit-exact against the tflite-micro interpreter. The integer primitives
themselves (SRDHM, RoundingDivideByPOT, MBQM, QuantizeMultiplier) are tested in test_arith.py."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from toolchain import fixedpoint as fp
from toolchain.arith import INT32_MAX as IMAX
from toolchain.arith import INT32_MIN as IMIN
from toolchain.ops import lookup_table as lut
from toolchain.ops import softmax as sm

# ----------------------------------------------------------------------------- primitives

def test_saturating_rounding_multiply_by_pot():
    x = np.array([1 << 28, (1 << 28) - 1, -(1 << 28), -(1 << 28) + 1, -(1 << 28) - 1, (1 << 28) + 1])
    assert fp.saturating_rounding_multiply_by_pot(x, 3).tolist() == \
        [IMAX, ((1 << 28) - 1) * 8, IMIN, (-(1 << 28) + 1) * 8, IMIN, IMAX]
    assert fp.saturating_rounding_multiply_by_pot(np.array([-6, 6]), -2).tolist() == [-2, 2]
    assert fp.rescale(np.array([IMAX]), 0, 12).tolist() == [1 << 19]   # One() in Q0 -> Q12
    assert fp.rescale(np.array([1 << 26]), 5, 0).tolist() == [IMAX]    # 1.0 saturates in Q0


def test_rounding_half_sum_and_wrapping_add():
    a, b = np.array([1, -1, 3, IMAX, IMIN]), np.array([0, 0, 0, IMAX, IMIN])
    assert fp.rounding_half_sum(a, b).tolist() == [1, -1, 2, IMAX, IMIN]
    assert fp.fixed_add(IMAX, 1).tolist() == IMIN
    assert fp.fixed_neg(IMIN).tolist() == IMIN
    assert fp.fixed_sub(IMIN, 1).tolist() == IMAX


def test_transcendentals_are_close_to_real_functions():
    # Q5.26 grid for exp; Q4.27 for logistic / tanh
    a = -np.arange(0, 32 << 26, 1 << 20)
    got = fp.exp_on_negative_values(a, 5) / 2.0 ** 31
    assert np.max(np.abs(got - np.exp(a / 2.0 ** 26))) < 2e-8 * 32
    assert fp.exp_on_negative_values(np.array([0]), 5).tolist() == [IMAX]
    # kIntegerBits > 5 path: values below -32 clamp to 0
    assert fp.exp_on_negative_values(np.array([-(33 << 19)]), 12).tolist() == [0]
    z = np.arange(-(16 << 27) + 1, 16 << 27, 1 << 21)
    assert np.max(np.abs(fp.logistic(z, 4) / 2.0 ** 31 - 1 / (1 + np.exp(-z / 2.0 ** 27)))) < 1e-7
    assert np.max(np.abs(fp.tanh(z, 4) / 2.0 ** 31 - np.tanh(z / 2.0 ** 27))) < 3e-7
    assert fp.logistic(np.array([0]), 4).tolist() == [1 << 30]
    assert fp.tanh(np.array([0]), 4).tolist() == [0]
    x = np.arange(0, IMAX, 1 << 22)
    assert np.max(np.abs(fp.one_over_one_plus_x_for_x_in_0_1(x) / 2.0 ** 31 - 1 / (1 + x / 2.0 ** 31))) < 1e-8


def test_count_leading_zeros_and_get_reciprocal():
    assert fp.count_leading_zeros_u32(np.array([0, 1, 2, 3, 1 << 19, IMAX, -1, IMIN])).tolist() == \
        [32, 31, 30, 30, 12, 1, 0, 0]
    raw, nbits = fp.get_reciprocal(np.array([1 << 19, 3 << 19]), 12)   # 1.0 and 3.0 in Q12.19
    assert nbits.tolist() == [0, 1]
    assert np.allclose(raw / 2.0 ** 31 / 2.0 ** nbits, [1.0, 1 / 3], atol=1e-8)


def test_multiply_by_quantized_multiplier_greater_than_one():
    assert fp.multiply_by_quantized_multiplier_greater_than_one(np.array([-3, 3]), 1 << 30, 4).tolist() == \
        [-24, 24]
    # x << left_shift wraps as the compiled int32 product does, before the high multiply
    assert fp.multiply_by_quantized_multiplier_greater_than_one(np.array([1 << 27]), 1 << 30, 4).tolist() == \
        [-(1 << 30)]


def test_calculate_input_radius():
    assert fp.calculate_input_radius(5, 23) == 248   # 31 * 2^26 / 2^23
    assert fp.calculate_input_radius(4, 24) == 120


def test_prepare_params_hand_worked():
    # scale 0.1 (float32 0.100000001490116...), beta 1
    p = sm.softmax_params(0.1)
    q, e = math.frexp(float(np.float32(0.1)) * 2.0 ** 26)
    assert p.input_left_shift == e == 23 and p.input_multiplier == round(q * 2 ** 31)
    assert p.diff_min == -248
    # capping at 2^31 - 1 for huge beta * scale
    big = sm.softmax_params(64.0)
    assert (big.input_multiplier, big.input_left_shift, big.diff_min) == (IMAX, 31, 0)
    lp = lut.activation_params(1 / 32, 5)
    assert (lp.input_multiplier, lp.input_left_shift, lp.input_range_radius, lp.input_zero_point) == \
        (1 << 30, 23, 15 * 16, 5)
    with pytest.raises(ValueError):
        sm.softmax_params(2.0 ** -30)


def test_softmax_kernel_properties():
    p = sm.softmax_params(0.05)
    x = np.random.default_rng(3).integers(-128, 128, (3, 4, 17)).astype(np.int8)
    y = sm.softmax_int8(x, p)
    assert y.shape == x.shape and y.dtype == np.int8
    flat = sm.softmax_int8(x.reshape(-1, 17), p).reshape(x.shape)
    assert np.array_equal(y, flat)
    assert np.all(np.abs((y.astype(int) + 128).sum(-1) - 256) <= 17)
    # all-equal row: exp sum = depth, each 1/depth
    eq = sm.softmax_int8(np.zeros((1, 4), np.int8), p)
    assert eq.tolist() == [[-64] * 4]


def test_tables_shape_and_monotone():
    for fn in (lut.logistic_table, lut.tanh_table):
        t = fn(lut.activation_params(0.07, -3))
        assert t.shape == (256,) and t.dtype == np.int8
        assert np.all(np.diff(t.astype(int)) >= 0)
    assert lut.logistic_table(lut.activation_params(0.07, 0))[128] == 0        # sigmoid(0) = 0.5
    assert lut.tanh_table(lut.activation_params(0.07, 0))[128] == 0


# ----------------------------------------------------------------------------- TFLM oracle

def _tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    tf = pytest.importorskip("tensorflow")
    pytest.importorskip("tflite_micro")
    return tf


def _convert(act: str, depth: int, lo: float, hi: float, batch: int) -> bytes:
    """Input -> Activation(act): the converter emits one SOFTMAX / LOGISTIC / TANH op whose input
    is the int8 graph input."""
    tf = _tf()
    inp = tf.keras.Input(shape=(depth,), batch_size=batch)
    model = tf.keras.Model(inp, tf.keras.layers.Activation(act)(inp))
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    rng = np.random.default_rng(0)

    def rep():
        for _ in range(8):
            v = rng.uniform(lo, hi, (batch, depth)).astype(np.float32)
            v[0, :2] = lo, hi
            yield [v]

    conv.representative_dataset = rep
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    return conv.convert()


def _model(buf: bytes):
    from ai_edge_litert import schema_py_generated as sch
    m = sch.ModelT.InitFromPackedBuf(buf, 0)
    sg = m.subgraphs[0]
    assert len(sg.operators) == 1, "expected a single-op model"
    op = sg.operators[0]
    assert op.inputs[0] == sg.inputs[0] and op.outputs[0] == sg.outputs[0]
    return m, sg, op


def _op_quant(buf: bytes):
    """(builtin code, input scale, input zp, output scale, output zp, beta or None)."""
    m, sg, op = _model(buf)
    qi = sg.tensors[op.inputs[0]].quantization
    qo = sg.tensors[op.outputs[0]].quantization
    beta = getattr(op.builtinOptions, "beta", None)
    return (m.operatorCodes[op.opcodeIndex].builtinCode, float(qi.scale[0]), int(qi.zeroPoint[0]),
            float(qo.scale[0]), int(qo.zeroPoint[0]), beta)


def _patch(buf: bytes, scale: float, zp: int, beta: float | None = None) -> bytes:
    """Same model with another input quantization (and softmax beta): exercises prepare-time
    parameter derivation on many scales without reconverting."""
    import flatbuffers
    m, sg, op = _model(buf)
    q = sg.tensors[op.inputs[0]].quantization
    q.scale, q.zeroPoint = [float(np.float32(scale))], [int(zp)]
    if beta is not None:
        op.builtinOptions.beta = float(np.float32(beta))
    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def _run(buf: bytes, x: np.ndarray) -> np.ndarray:
    from tflite_micro.python.tflite_micro import runtime
    it = runtime.Interpreter.from_bytes(buf, arena_size=8 * x.nbytes + (1 << 16))
    it.set_input(x, 0)
    it.invoke()
    return np.asarray(it.get_output(0))


def _softmax_inputs(rng, batch: int, depth: int) -> np.ndarray:
    x = rng.integers(-128, 128, (batch, depth))
    # structured rows: narrow spreads near the max (where diff_min / rounding matter), ties,
    # constant rows, single -128 / 127 extremes
    x[0] = 127
    x[1] = -128
    x[2] = rng.integers(120, 128, depth)
    x[3] = rng.choice([-128, 127], depth)
    x[4] = rng.integers(-5, 1, depth)
    for r in range(5, min(batch, 5 + 16)):
        x[r] = np.clip(127 - rng.integers(0, 2 ** (r - 5 if r < 13 else 8), depth), -128, 127)
    return x.astype(np.int8)


SOFTMAX_DEPTHS = (2, 3, 10, 100, 1000)
RANGES = ((-1.0, 1.0), (-10.0, 10.0), (-100.0, 100.0))


@pytest.mark.tf
@pytest.mark.parametrize("lo,hi", RANGES)
def test_softmax_bit_exact_vs_tflm(lo, hi):
    rng = np.random.default_rng(int(hi))
    total = 0
    for depth in SOFTMAX_DEPTHS:
        batch = 64 if depth <= 100 else 24
        buf = _convert("softmax", depth, lo, hi, batch)
        code, s_in, zp_in, s_out, zp_out, beta = _op_quant(buf)
        assert code == 25 and (s_out, zp_out) == sm.SOFTMAX_OUTPUT_QUANT
        p = sm.softmax_params(s_in, beta)
        x = _softmax_inputs(rng, batch, depth)
        n_aborting = _replace_aborting_rows(x, p, rng)
        want = _run(buf, x)
        got = sm.softmax_int8(x, p)
        assert np.array_equal(got, want), f"depth {depth}: {np.sum(got != want)} mismatches"
        total += x.size
        print(f"softmax range [{lo},{hi}] scale {s_in:.6g} depth {depth}: {np.sum(got == want)}/{x.size} "
              f"outputs bit-exact ({n_aborting} TFLM-aborting rows replaced)")
    assert total > 0


def _replace_aborting_rows(x: np.ndarray, p, rng) -> int:
    """TFLM aborts the whole program on rows whose exp sum reaches 512 (see
    test_softmax_tflm_aborts_on_flat_wide_rows); the in-process oracle cannot run them."""
    bad = sm.softmax_int8_aborts(x, p)
    n = int(bad.sum())
    for _ in range(20):
        if not bad.any():
            return n
        x[bad] = rng.integers(-128, 128, (int(bad.sum()), x.shape[-1]))
        bad = sm.softmax_int8_aborts(x, p)
    x[bad] = -128
    x[bad, 0] = 127
    return n


_ABORT_SCRIPT = """
import sys, numpy as np
from tflite_micro.python.tflite_micro import runtime
buf = open(sys.argv[1], 'rb').read()
it = runtime.Interpreter.from_bytes(buf, arena_size=1 << 20)
it.set_input(np.zeros((1, 600), np.int8), 0)
it.invoke()
print('survived', it.get_output(0)[0, :3])
"""


@pytest.mark.tf
def test_softmax_tflm_aborts_on_flat_wide_rows(tmp_path):
    """A flat int8 row of depth 600: sum of exps = 600 >= 512 -> exponent 32 -> TFLITE_CHECK abort."""
    import subprocess
    import sys
    buf = _convert("softmax", 600, -1.0, 1.0, 1)
    _, s_in, _, _, _, beta = _op_quant(buf)
    p = sm.softmax_params(s_in, beta)
    x = np.zeros((1, 600), np.int8)
    assert sm.softmax_int8_aborts(x, p).tolist() == [True]
    with pytest.raises(ArithmeticError):
        sm.softmax_int8(x, p)
    path = tmp_path / "sm.tflite"
    path.write_bytes(buf)
    r = subprocess.run([sys.executable, "-c", _ABORT_SCRIPT, str(path)], capture_output=True, timeout=60)
    assert r.returncode != 0 and b"survived" not in r.stdout


@pytest.mark.tf
def test_softmax_bit_exact_scale_and_beta_sweep():
    """Patched input scales from 2^-12 to 50 (the latter hits the 2^31 - 1 multiplier cap) and betas."""
    rng = np.random.default_rng(7)
    depth, batch = 33, 48
    base = _convert("softmax", depth, -4.0, 4.0, batch)
    scales = np.exp(rng.uniform(np.log(2.0 ** -12), np.log(50.0), 24))
    betas = rng.choice([1.0, 0.5, 2.7, 0.1], 24)
    n_eq = n_all = 0
    for s, b in zip(scales, betas, strict=True):
        buf = _patch(base, s, 0, b)
        x = _softmax_inputs(rng, batch, depth)
        p = sm.softmax_params(s, b)
        _replace_aborting_rows(x, p, rng)
        got = sm.softmax_int8(x, p)
        want = _run(buf, x)
        n_eq += int(np.sum(got == want))
        n_all += got.size
        assert np.array_equal(got, want), f"scale {s} beta {b}: {np.sum(got != want)} mismatches"
    print(f"softmax patched sweep: {n_eq}/{n_all} outputs bit-exact over {len(scales)} (scale, beta)")


ALL_INT8 = np.arange(-128, 128, dtype=np.int64).astype(np.int8).reshape(1, 256)
ACTS = (("sigmoid", 14, lut.activation_params, lut.logistic_table, lut.LOGISTIC_OUTPUT_QUANT),
        ("tanh", 28, lut.activation_params, lut.tanh_table, lut.TANH_OUTPUT_QUANT))


@pytest.mark.tf
@pytest.mark.parametrize("act,code,params,table,outq", ACTS, ids=["logistic", "tanh"])
def test_activation_tables_bit_exact_vs_tflm(act, code, params, table, outq):
    """Exhaustive over all 256 int8 inputs, calibrated ranges plus a patched (scale, zp) sweep."""
    rng = np.random.default_rng(11)
    base = None
    for lo, hi in RANGES + ((-1.0, 3.0), (-7.0, 0.5)):
        buf = _convert(act, 256, lo, hi, 1)
        base = base or buf
        c, s_in, zp_in, s_out, zp_out, _ = _op_quant(buf)
        assert c == code and (s_out, zp_out) == outq
        got = table(params(s_in, zp_in))[ALL_INT8.astype(np.int64) + 128]
        want = _run(buf, ALL_INT8)
        assert np.array_equal(got, want), f"range [{lo},{hi}]: {np.sum(got != want)} mismatches"
        print(f"{act} range [{lo},{hi}] scale {s_in:.6g} zp {zp_in}: {np.sum(got == want)}/256 bit-exact")
    n_eq = 0
    sweep = list(zip(np.exp(rng.uniform(np.log(2.0 ** -9), np.log(20.0), 40)),
                     rng.integers(-128, 128, 40), strict=True)) + [(8.0, 0), (2.0 ** -27, 3)]
    for s, zp in sweep:
        got = table(params(s, zp))[ALL_INT8.astype(np.int64) + 128]
        want = _run(_patch(base, s, zp), ALL_INT8)
        n_eq += int(np.sum(got == want))
        assert np.array_equal(got, want), f"scale {s} zp {zp}: {np.sum(got != want)} mismatches"
    print(f"{act} patched sweep: {n_eq}/{256 * len(sweep)} bit-exact over {len(sweep)} (scale, zp)")
