/* qassure int8 kernels: bit-exact C99 re-implementations of the TensorFlow Lite Micro
 * reference int8 kernels.  See qassure_kernels.h for conventions.  Written from the
 * documented behaviour of TFLM's reference_integer_ops / reference_ops and gemmlowp's
 * fixedpoint.h; each function names the behaviour it reproduces. */
#include "qassure_kernels.h"

#include <string.h>

const int32_t QA_KERNELS_ROUNDING_GUARD = 1;

static inline int32_t qa_min32(int32_t a, int32_t b) { return a < b ? a : b; }
static inline int32_t qa_max32(int32_t a, int32_t b) { return a > b ? a : b; }
static inline int32_t qa_clamp32(int32_t v, int32_t lo, int32_t hi) { return qa_min32(qa_max32(v, lo), hi); }

/* x * 2^left_shift in int32 with two's-complement wrap, as the device's `x * (1 << s)`
 * (written on uint32 so the C source has no signed-overflow UB). */
static inline int32_t qa_shl32(int32_t x, int left_shift)
{
    return (int32_t)((uint32_t)x << left_shift);
}

/* ===================================================================================
 * Rounding primitives
 * =================================================================================== */

/* gemmlowp SaturatingRoundingDoublingHighMul: (a*b*2 + 2^31) >> 32 with round half away
 * from zero, computed as (ab + nudge) / 2^31 with C truncating division, nudge = 2^30
 * for ab >= 0 and 1 - 2^30 otherwise; the single overflow case a = b = INT32_MIN
 * saturates to INT32_MAX. */
int32_t qa_saturating_rounding_doubling_high_mul(int32_t a, int32_t b)
{
    if (a == b && a == INT32_MIN) return INT32_MAX;
    const int64_t ab = (int64_t)a * (int64_t)b;
    const int64_t nudge = (ab >= 0) ? (INT64_C(1) << 30) : (INT64_C(1) - (INT64_C(1) << 30));
    return (int32_t)((ab + nudge) / (INT64_C(1) << 31));
}

/* gemmlowp RoundingDivideByPOT: x / 2^exponent (0 <= exponent <= 31) rounded half away
 * from zero, via arithmetic shift plus a remainder/threshold correction. */
int32_t qa_rounding_divide_by_pot(int32_t x, int exponent)
{
    const int32_t mask = (int32_t)((UINT32_C(1) << exponent) - 1u);
    const int32_t remainder = x & mask;
    const int32_t threshold = (mask >> 1) + ((x < 0) ? 1 : 0);
    return (x >> exponent) + ((remainder > threshold) ? 1 : 0);
}

#if QA_SINGLE_ROUNDING
/* TFLM common.h MultiplyByQuantizedMultiplier under TFLITE_SINGLE_ROUNDING (= CMSIS-NN
 * arm_nn_requantize with CMSIS_NN_USE_SINGLE_ROUNDING): one rounding, half up,
 * (x*M + 2^(30-shift)) >> (31-shift) in int64; requires -31 <= shift <= 30. */
int32_t qa_multiply_by_quantized_multiplier(int32_t x, int32_t multiplier, int shift)
{
    const int total_shift = 31 - shift;
    const int64_t round = INT64_C(1) << (total_shift - 1);
    const int64_t result = ((int64_t)x * (int64_t)multiplier + round) >> total_shift;
    return (int32_t)result;
}

/* TFLM: with TFLITE_SINGLE_ROUNDING both helpers are MultiplyByQuantizedMultiplier. */
int32_t qa_multiply_by_quantized_multiplier_greater_than_one(int32_t x, int32_t multiplier, int left_shift)
{
    return qa_multiply_by_quantized_multiplier(x, multiplier, left_shift);
}

int32_t qa_multiply_by_quantized_multiplier_smaller_than_one_exp(int32_t x, int32_t multiplier, int shift)
{
    return qa_multiply_by_quantized_multiplier(x, multiplier, shift);
}
#else
/* TFLM common.h MultiplyByQuantizedMultiplier, double rounding (default build; equal to
 * CMSIS-NN arm_nn_requantize except at a = M = INT32_MIN where CMSIS-NN does not
 * saturate): left shift max(shift,0) with int32 wrap, SaturatingRoundingDoublingHighMul,
 * then RoundingDivideByPOT by max(-shift,0). */
int32_t qa_multiply_by_quantized_multiplier(int32_t x, int32_t multiplier, int shift)
{
    const int left_shift = shift > 0 ? shift : 0;
    const int right_shift = shift > 0 ? 0 : -shift;
    return qa_rounding_divide_by_pot(
        qa_saturating_rounding_doubling_high_mul(qa_shl32(x, left_shift), multiplier), right_shift);
}

/* TFLM MultiplyByQuantizedMultiplierGreaterThanOne: SRDHM(x * 2^left_shift, M). */
int32_t qa_multiply_by_quantized_multiplier_greater_than_one(int32_t x, int32_t multiplier, int left_shift)
{
    return qa_saturating_rounding_doubling_high_mul(qa_shl32(x, left_shift), multiplier);
}

/* TFLM MultiplyByQuantizedMultiplierSmallerThanOneExp: RDBPOT(SRDHM(x, M), -shift),
 * defined for shift <= 0; a positive shift (never produced for int8 ADD) falls back
 * to the general MultiplyByQuantizedMultiplier instead of a negative exponent. */
int32_t qa_multiply_by_quantized_multiplier_smaller_than_one_exp(int32_t x, int32_t multiplier, int shift)
{
    if (shift > 0) return qa_multiply_by_quantized_multiplier(x, multiplier, shift);
    return qa_rounding_divide_by_pot(qa_saturating_rounding_doubling_high_mul(x, multiplier), -shift);
}
#endif

/* Output stage of FULLY_CONNECTED / CONV_2D / DEPTHWISE_CONV_2D (TFLM): + bias[oc] (bias
 * nullable), MultiplyByQuantizedMultiplier with channel ch's (M, shift), + output offset,
 * clamp to the fused activation range. */
static inline int8_t qa_output_stage(int32_t acc, const int32_t *bias, int32_t oc, int32_t ch,
                                     const int32_t *multiplier, const int32_t *shift, int32_t output_offset,
                                     int32_t act_min, int32_t act_max)
{
    if (bias != 0) acc += bias[oc];
    acc = qa_multiply_by_quantized_multiplier(acc, multiplier[ch], shift[ch]) + output_offset;
    return (int8_t)qa_clamp32(acc, act_min, act_max);
}

/* ===================================================================================
 * FULLY_CONNECTED: reference_integer_ops::FullyConnected (per-tensor) and
 * FullyConnectedPerChannel: acc = sum (w + filter_offset) * (x + input_offset) + bias,
 * MultiplyByQuantizedMultiplier, + output_offset, clamp to [act_min, act_max].
 * =================================================================================== */
void qa_fully_connected(const qa_fc_params *p, const int8_t *input, const int8_t *filter,
                        const int32_t *bias, int8_t *output)
{
    for (int32_t b = 0; b < p->batches; ++b) {
        const int8_t *x = input + b * p->accum_depth;
        for (int32_t oc = 0; oc < p->output_depth; ++oc) {
            const int8_t *w = filter + oc * p->accum_depth;
            int32_t acc = 0;
            for (int32_t d = 0; d < p->accum_depth; ++d) {
                acc += ((int32_t)w[d] + p->filter_offset) * ((int32_t)x[d] + p->input_offset);
            }
            output[b * p->output_depth + oc] =
                qa_output_stage(acc, bias, oc, p->per_channel ? oc : 0, p->output_multiplier, p->output_shift,
                                p->output_offset, p->act_min, p->act_max);
        }
    }
}

/* ===================================================================================
 * CONV_2D and DEPTHWISE_CONV_2D: reference_integer_ops::ConvPerChannel and
 * DepthwiseConvPerChannel, written once as a grouped convolution.  Output pixel (y, x)
 * reads input rows y*stride_h - pad_h + dilation_h*fy (columns likewise); taps outside
 * the image are skipped (they contribute zero *after* the input offset, i.e. real zero
 * padding).  Output channel oc reads the group_c input channels starting at
 * (oc / filters_per_group) * group_c, and filter element (oc, fy, fx, i) at
 * oc*ws[0] + fy*ws[1] + fx*ws[2] + i.  int32 sums wrap, so the order of the terms
 * (TFLM's depthwise loop has no channel loop) does not change the result.
 * =================================================================================== */
static void qa_conv_core(const qa_conv_params *p, const int8_t *input, const int8_t *filter, const int32_t *bias,
                         int8_t *output, int32_t group_c, int32_t filters_per_group, const int32_t ws[3])
{
    for (int32_t b = 0; b < p->batches; ++b) {
        for (int32_t oy = 0; oy < p->output_h; ++oy) {
            const int32_t in_y0 = oy * p->stride_h - p->pad_h;
            for (int32_t ox = 0; ox < p->output_w; ++ox) {
                const int32_t in_x0 = ox * p->stride_w - p->pad_w;
                for (int32_t oc = 0; oc < p->output_c; ++oc) {
                    const int32_t in_c0 = (oc / filters_per_group) * group_c;
                    int32_t acc = 0;
                    for (int32_t fy = 0; fy < p->filter_h; ++fy) {
                        const int32_t in_y = in_y0 + p->dilation_h * fy;
                        if (in_y < 0 || in_y >= p->input_h) continue;
                        for (int32_t fx = 0; fx < p->filter_w; ++fx) {
                            const int32_t in_x = in_x0 + p->dilation_w * fx;
                            if (in_x < 0 || in_x >= p->input_w) continue;
                            const int8_t *xin = input + ((b * p->input_h + in_y) * p->input_w + in_x) * p->input_c + in_c0;
                            const int8_t *w = filter + oc * ws[0] + fy * ws[1] + fx * ws[2];
                            for (int32_t i = 0; i < group_c; ++i) {
                                acc += (int32_t)w[i] * ((int32_t)xin[i] + p->input_offset);
                            }
                        }
                    }
                    output[((b * p->output_h + oy) * p->output_w + ox) * p->output_c + oc] =
                        qa_output_stage(acc, bias, oc, oc, p->output_multiplier, p->output_shift, p->output_offset,
                                        p->act_min, p->act_max);
                }
            }
        }
    }
}

/* Grouped convolution when filter_c < input_c, as TFLM's groups = input_c / filter_c. */
void qa_conv2d(const qa_conv_params *p, const int8_t *input, const int8_t *filter, const int32_t *bias,
               int8_t *output)
{
    const int32_t ws[3] = {p->filter_h * p->filter_w * p->filter_c, p->filter_w * p->filter_c, p->filter_c};
    qa_conv_core(p, input, filter, bias, output, p->filter_c, p->output_c / (p->input_c / p->filter_c), ws);
}

/* TRANSPOSE_CONV: reference_integer_ops::TransposeConv scatters w * (x + input_offset) from input
 * (iy, ix) into output (iy * stride - pad + fy, ix * stride - pad + fx) in an int32 scratch buffer;
 * the same sum is gathered here per output (the inputs whose scatter reaches it), without the
 * buffer: integer additions in another order, the same int32 value. Then bias, MBQM, offset, clamp. */
void qa_transpose_conv2d(const qa_conv_params *p, const int8_t *input, const int8_t *filter, const int32_t *bias,
                         int8_t *output)
{
    for (int32_t oy = 0; oy < p->output_h; ++oy) {
        for (int32_t ox = 0; ox < p->output_w; ++ox) {
            for (int32_t oc = 0; oc < p->output_c; ++oc) {
                int32_t acc = 0;
                for (int32_t fy = 0; fy < p->filter_h; ++fy) {
                    const int32_t ty = oy + p->pad_h - fy;
                    if (ty < 0 || ty % p->stride_h != 0 || ty / p->stride_h >= p->input_h) continue;
                    const int32_t iy = ty / p->stride_h;
                    for (int32_t fx = 0; fx < p->filter_w; ++fx) {
                        const int32_t tx = ox + p->pad_w - fx;
                        if (tx < 0 || tx % p->stride_w != 0 || tx / p->stride_w >= p->input_w) continue;
                        const int32_t ix = tx / p->stride_w;
                        const int8_t *in = input + (iy * p->input_w + ix) * p->input_c;
                        const int8_t *w = filter + ((oc * p->filter_h + fy) * p->filter_w + fx) * p->input_c;
                        for (int32_t ic = 0; ic < p->input_c; ++ic) acc += ((int32_t)in[ic] + p->input_offset) * w[ic];
                    }
                }
                if (bias) acc += bias[oc];
                acc = qa_multiply_by_quantized_multiplier(acc, p->output_multiplier[oc], p->output_shift[oc]);
                acc += p->output_offset;
                output[(oy * p->output_w + ox) * p->output_c + oc] = (int8_t)qa_clamp32(acc, p->act_min, p->act_max);
            }
        }
    }
}

/* Output channel oc = ic * depth_multiplier + m reads input channel ic and filter column oc. */
void qa_depthwise_conv2d(const qa_conv_params *p, const int8_t *input, const int8_t *filter,
                         const int32_t *bias, int8_t *output)
{
    const int32_t ws[3] = {1, p->filter_w * p->output_c, p->output_c};
    qa_conv_core(p, input, filter, bias, output, 1, p->depth_multiplier, ws);
}

/* ===================================================================================
 * Pooling: reference_integer_ops::AveragePool / MaxPool (int8).  The window is cut to
 * the valid part of the input; no zero point handling (input and output share it).
 * AveragePool: sum of the valid elements divided by their count, rounded half away
 * from zero as (acc +- count/2) / count with C truncation; MaxPool: their maximum,
 * starting from std::numeric_limits<int8_t>::lowest().  Both then clamp.
 * Returns -1 when an average window has no valid element (TFLM returns false).
 * =================================================================================== */
static int qa_pool(const qa_pool_params *p, const int8_t *input, int8_t *output, int average)
{
    for (int32_t b = 0; b < p->batches; ++b) {
        for (int32_t oy = 0; oy < p->output_h; ++oy) {
            const int32_t in_y0 = oy * p->stride_h - p->pad_h;
            const int32_t fy0 = qa_max32(0, -in_y0);
            const int32_t fy1 = qa_min32(p->filter_h, p->input_h - in_y0);
            for (int32_t ox = 0; ox < p->output_w; ++ox) {
                const int32_t in_x0 = ox * p->stride_w - p->pad_w;
                const int32_t fx0 = qa_max32(0, -in_x0);
                const int32_t fx1 = qa_min32(p->filter_w, p->input_w - in_x0);
                for (int32_t c = 0; c < p->channels; ++c) {
                    int32_t acc = 0, count = 0, mx = INT8_MIN;
                    for (int32_t fy = fy0; fy < fy1; ++fy) {
                        for (int32_t fx = fx0; fx < fx1; ++fx) {
                            const int32_t v =
                                input[((b * p->input_h + in_y0 + fy) * p->input_w + in_x0 + fx) * p->channels + c];
                            acc += v;
                            mx = qa_max32(mx, v);
                            ++count;
                        }
                    }
                    int32_t out = mx;
                    if (average) {
                        if (count == 0) return -1;
                        out = (acc > 0) ? (acc + count / 2) / count : (acc - count / 2) / count;
                    }
                    output[((b * p->output_h + oy) * p->output_w + ox) * p->channels + c] =
                        (int8_t)qa_clamp32(out, p->act_min, p->act_max);
                }
            }
        }
    }
    return 0;
}

int qa_average_pool(const qa_pool_params *p, const int8_t *input, int8_t *output)
{
    return qa_pool(p, input, output, 1);
}

void qa_max_pool(const qa_pool_params *p, const int8_t *input, int8_t *output)
{
    (void)qa_pool(p, input, output, 0);
}

/* ===================================================================================
 * ADD: reference_integer_ops::AddElementwise (int8): each input (q + offset) << 20,
 * MultiplyByQuantizedMultiplierSmallerThanOneExp with its own multiplier, sum, the
 * same with the output multiplier, + output_offset, clamp.
 * =================================================================================== */
void qa_add(const qa_add_params *p, const int8_t *input1, const int8_t *input2, int8_t *output)
{
    for (int32_t i = 0; i < p->size; ++i) {
        const int32_t v1 = qa_shl32((int32_t)input1[i] + p->input1_offset, p->left_shift);
        const int32_t v2 = qa_shl32((int32_t)input2[i] + p->input2_offset, p->left_shift);
        const int32_t s1 = qa_multiply_by_quantized_multiplier_smaller_than_one_exp(v1, p->input1_multiplier, p->input1_shift);
        const int32_t s2 = qa_multiply_by_quantized_multiplier_smaller_than_one_exp(v2, p->input2_multiplier, p->input2_shift);
        const int32_t raw = qa_multiply_by_quantized_multiplier_smaller_than_one_exp(s1 + s2, p->output_multiplier,
                                                                                   p->output_shift) + p->output_offset;
        output[i] = (int8_t)qa_clamp32(raw, p->act_min, p->act_max);
    }
}

void qa_sub(const qa_add_params *p, const int8_t *input1, const int8_t *input2, int8_t *output)
{
    for (int32_t i = 0; i < p->size; ++i) {
        const int32_t v1 = qa_shl32((int32_t)input1[i] + p->input1_offset, p->left_shift);
        const int32_t v2 = qa_shl32((int32_t)input2[i] + p->input2_offset, p->left_shift);
        const int32_t s1 = qa_multiply_by_quantized_multiplier_smaller_than_one_exp(v1, p->input1_multiplier, p->input1_shift);
        const int32_t s2 = qa_multiply_by_quantized_multiplier_smaller_than_one_exp(v2, p->input2_multiplier, p->input2_shift);
        const int32_t raw = qa_multiply_by_quantized_multiplier_smaller_than_one_exp(s1 - s2, p->output_multiplier,
                                                                                   p->output_shift) + p->output_offset;
        output[i] = (int8_t)qa_clamp32(raw, p->act_min, p->act_max);
    }
}

/* ===================================================================================
 * MUL: reference_integer_ops::MulElementwise (int8):
 * output_offset + MultiplyByQuantizedMultiplier((q1 + off1) * (q2 + off2), M, shift).
 * =================================================================================== */
void qa_mul(const qa_mul_params *p, const int8_t *input1, const int8_t *input2, int8_t *output)
{
    for (int32_t i = 0; i < p->size; ++i) {
        const int32_t prod = ((int32_t)input1[i] + p->input1_offset) * ((int32_t)input2[i] + p->input2_offset);
        const int32_t raw = p->output_offset + qa_multiply_by_quantized_multiplier(prod, p->output_multiplier, p->output_shift);
        output[i] = (int8_t)qa_clamp32(raw, p->act_min, p->act_max);
    }
}

/* ===================================================================================
 * PAD: reference_ops::Pad (constant mode): every output element outside the copied
 * input block takes pad_value (the output zero point for int8 PAD).
 * =================================================================================== */
void qa_pad(const qa_pad_params *p, const int8_t *input, int8_t *output)
{
    int32_t od[4];
    for (int k = 0; k < 4; ++k) od[k] = p->pad_before[k] + p->input_dims[k] + p->pad_after[k];
    int32_t o = 0;
    for (int32_t i0 = 0; i0 < od[0]; ++i0) {
        const int32_t j0 = i0 - p->pad_before[0];
        for (int32_t i1 = 0; i1 < od[1]; ++i1) {
            const int32_t j1 = i1 - p->pad_before[1];
            for (int32_t i2 = 0; i2 < od[2]; ++i2) {
                const int32_t j2 = i2 - p->pad_before[2];
                for (int32_t i3 = 0; i3 < od[3]; ++i3, ++o) {
                    const int32_t j3 = i3 - p->pad_before[3];
                    const int inside = j0 >= 0 && j0 < p->input_dims[0] && j1 >= 0 && j1 < p->input_dims[1]
                                       && j2 >= 0 && j2 < p->input_dims[2] && j3 >= 0 && j3 < p->input_dims[3];
                    output[o] = inside ? input[((j0 * p->input_dims[1] + j1) * p->input_dims[2] + j2) * p->input_dims[3] + j3]
                                       : (int8_t)p->pad_value;
                }
            }
        }
    }
}

/* ===================================================================================
 * CONCATENATION along the last axis: TFLM int8 CONCATENATION requires all inputs and
 * the output to share scale and zero point, so it is a pure copy (reference_ops::
 * Concatenation): for each outer index, the inputs' rows one after another.
 * =================================================================================== */
void qa_concatenation(const qa_concat_params *p, const int8_t *const *inputs, int8_t *output)
{
    for (int32_t o = 0; o < p->outer_size; ++o) {
        for (int32_t i = 0; i < p->num_inputs; ++i) {
            const int32_t n = p->axis_sizes[i];
            memcpy(output, inputs[i] + o * n, (size_t)n);
            output += n;
        }
    }
}

/* Strides of a 4-D tensor and, per axis, how many steps the kept (outer) and reduced (inner) loops take. */
static void qa_reduce_layout(const int32_t dims[4], const int32_t reduced[4], int32_t stride[4], int32_t outer[4],
                             int32_t inner[4])
{
    stride[3] = 1;
    for (int k = 2; k >= 0; --k) stride[k] = stride[k + 1] * dims[k + 1];
    for (int k = 0; k < 4; ++k) {
        outer[k] = reduced[k] ? 1 : dims[k];
        inner[k] = reduced[k] ? dims[k] : 1;
    }
}

/* Where output element o's window starts: o's kept-axis coordinates (row-major over outer) times the strides. */
static const int8_t *qa_reduce_base(const int8_t *input, const int32_t stride[4], const int32_t outer[4], int32_t o)
{
    const int8_t *base = input;
    for (int k = 3; k >= 0; --k) {
        base += (o % outer[k]) * stride[k];
        o /= outer[k];
    }
    return base;
}

/* The int32 sum (take_max 0) or the maximum from INT8_MIN (take_max 1) of one window, in row-major order. */
static int32_t qa_reduce_window(const int8_t *base, const int32_t stride[4], const int32_t inner[4], int take_max)
{
    int32_t acc = take_max ? INT8_MIN : 0;
    for (int32_t b0 = 0; b0 < inner[0]; ++b0)
        for (int32_t b1 = 0; b1 < inner[1]; ++b1)
            for (int32_t b2 = 0; b2 < inner[2]; ++b2)
                for (int32_t b3 = 0; b3 < inner[3]; ++b3) {
                    const int32_t v = base[b0 * stride[0] + b1 * stride[1] + b2 * stride[2] + b3];
                    acc = take_max ? qa_max32(acc, v) : acc + v;
                }
    return acc;
}

/* ===================================================================================
 * MEAN: reference_ops::QuantizedMeanOrSum (TFLM reduce_common.cc for int8 MEAN): int32
 * sum over the reduced axes, minus input_zero_point * count, ONE MultiplyByQuantizedMultiplier
 * with the multiplier that already holds 1/count (prepare folds it in as reduce.h does),
 * + output zero point, clamp to int8.
 * =================================================================================== */
void qa_mean(const qa_mean_params *p, const int8_t *input, int8_t *output)
{
    int32_t stride[4], outer[4], inner[4];
    qa_reduce_layout(p->dims, p->reduced, stride, outer, inner);
    const int32_t n = outer[0] * outer[1] * outer[2] * outer[3];
    for (int32_t o = 0; o < n; ++o) {
        const int32_t sum = qa_reduce_window(qa_reduce_base(input, stride, outer, o), stride, inner, 0)
            - p->input_zero_point * p->count;
        const int32_t raw = qa_multiply_by_quantized_multiplier(sum, p->multiplier, p->shift) + p->output_offset;
        output[o] = (int8_t)qa_clamp32(raw, INT8_MIN, INT8_MAX);
    }
}

/* ===================================================================================
 * TRANSPOSE: reference_ops::Transpose (values copied in the permuted order).
 * =================================================================================== */
void qa_transpose(const qa_transpose_params *p, const int8_t *input, int8_t *output)
{
    int32_t stride[4], out_dims[4], step[4];
    stride[3] = 1;
    for (int k = 2; k >= 0; --k) stride[k] = stride[k + 1] * p->input_dims[k + 1];
    for (int k = 0; k < 4; ++k) {
        out_dims[k] = p->input_dims[p->perm[k]];
        step[k] = stride[p->perm[k]];
    }
    int32_t o = 0;
    for (int32_t a0 = 0; a0 < out_dims[0]; ++a0)
        for (int32_t a1 = 0; a1 < out_dims[1]; ++a1)
            for (int32_t a2 = 0; a2 < out_dims[2]; ++a2)
                for (int32_t a3 = 0; a3 < out_dims[3]; ++a3, ++o)
                    output[o] = input[a0 * step[0] + a1 * step[1] + a2 * step[2] + a3 * step[3]];
}

/* ===================================================================================
 * STRIDED_SLICE: reference_ops::StridedSlice (int8 values copied; input and output share one
 * quantization). The loops of strided_slice_logic.h, with each axis's start and trip count
 * resolved from begin, end, strides and the masks by the generator.
 * =================================================================================== */
void qa_strided_slice(const qa_strided_slice_params *p, const int8_t *input, int8_t *output)
{
    int32_t stride[4];
    stride[3] = 1;
    for (int k = 2; k >= 0; --k) stride[k] = stride[k + 1] * p->input_dims[k + 1];
    int32_t o = 0;
    for (int32_t a0 = 0; a0 < p->count[0]; ++a0) {
        const int32_t i0 = (p->start[0] + a0 * p->stride[0]) * stride[0];
        for (int32_t a1 = 0; a1 < p->count[1]; ++a1) {
            const int32_t i1 = i0 + (p->start[1] + a1 * p->stride[1]) * stride[1];
            for (int32_t a2 = 0; a2 < p->count[2]; ++a2) {
                const int32_t i2 = i1 + (p->start[2] + a2 * p->stride[2]) * stride[2];
                for (int32_t a3 = 0; a3 < p->count[3]; ++a3, ++o)
                    output[o] = input[i2 + p->start[3] + a3 * p->stride[3]];
            }
        }
    }
}

/* ===================================================================================
 * PRELU: reference_ops::BroadcastPrelu4DSlow, alpha already broadcast to the input's shape.
 * =================================================================================== */
void qa_prelu(const qa_prelu_params *p, const int8_t *input, const int8_t *alpha, int8_t *output)
{
    for (int32_t i = 0; i < p->size; ++i) {
        const int32_t v = (int32_t)input[i] + p->input_offset;
        const int32_t raw = v >= 0
            ? qa_multiply_by_quantized_multiplier(v, p->multiplier_1, p->shift_1)
            : qa_multiply_by_quantized_multiplier(v * ((int32_t)alpha[i] + p->alpha_offset), p->multiplier_2, p->shift_2);
        output[i] = (int8_t)qa_clamp32(raw + p->output_offset, INT8_MIN, INT8_MAX);
    }
}

/* ===================================================================================
 * REDUCE_MAX: reference_ops::ReduceGeneric with max from INT8_MIN (reduce_common.cc, int8:
 * input and output share scale and zero point, so the value is copied as it is).
 * =================================================================================== */
void qa_reduce_max(const qa_reduce_max_params *p, const int8_t *input, int8_t *output)
{
    int32_t stride[4], outer[4], inner[4];
    qa_reduce_layout(p->dims, p->reduced, stride, outer, inner);
    const int32_t n = outer[0] * outer[1] * outer[2] * outer[3];
    for (int32_t o = 0; o < n; ++o)
        output[o] = (int8_t)qa_reduce_window(qa_reduce_base(input, stride, outer, o), stride, inner, 1);
}

/* ===================================================================================
 * QUANTIZE int8 -> int8: reference_ops::Requantize:
 * MultiplyByQuantizedMultiplier(q - input_zero_point, M, shift) + output_zero_point, clamp.
 * =================================================================================== */
void qa_requantize(const qa_requantize_params *p, const int8_t *input, int8_t *output)
{
    for (int32_t i = 0; i < p->size; ++i) {
        const int32_t raw = qa_multiply_by_quantized_multiplier((int32_t)input[i] - p->input_zero_point, p->multiplier,
                                                                p->shift) + p->output_zero_point;
        output[i] = (int8_t)qa_clamp32(raw, INT8_MIN, INT8_MAX);
    }
}

/* ===================================================================================
 * Elementwise int8 maps through a 256-entry table (LOGISTIC, TANH, ...): the table
 * index is the int8 input + 128.
 * =================================================================================== */
void qa_lookup_table(const int8_t table[256], const int8_t *input, int8_t *output, int32_t size)
{
    for (int32_t i = 0; i < size; ++i) output[i] = table[(int32_t)input[i] + 128];
}

/* ===================================================================================
 * SOFTMAX int8: reference_ops::Softmax<int8_t, int8_t> (TFLM softmax for int8 in/out),
 * gemmlowp fixed point.  Q-formats: input differences in Q5.26 (kScaledDiffIntegerBits
 * = 5), exponentials in Q0.31, their sum in Q12.19 (kAccumulationIntegerBits = 12).
 * =================================================================================== */

/* gemmlowp SaturatingRoundingMultiplyByPOT<exponent>: saturating x * 2^exponent for
 * exponent > 0, RoundingDivideByPOT for exponent < 0. */
static int32_t qa_fp_mul_pot(int32_t x, int exponent)
{
    if (exponent > 0) {
        const int32_t threshold = (int32_t)((UINT32_C(1) << (31 - exponent)) - 1u);
        if (x > threshold) return INT32_MAX;
        if (x < -threshold) return INT32_MIN;
        return qa_shl32(x, exponent);
    }
    if (exponent < 0) return qa_rounding_divide_by_pot(x, -exponent);
    return x;
}

/* FixedPoint multiplication: raw SaturatingRoundingDoublingHighMul (Qa * Qb -> Qa+b). */
static inline int32_t qa_fp_mul(int32_t a, int32_t b) { return qa_saturating_rounding_doubling_high_mul(a, b); }

/* gemmlowp exp_on_interval_between_negative_one_quarter_and_0_excl (Q0.31 in and out):
 * 4th-order Taylor expansion of exp around -1/8. */
static int32_t qa_exp_on_interval_neg_quarter_0(int32_t a)
{
    const int32_t constant_term = 1895147668;  /* exp(-1/8) */
    const int32_t constant_1_over_3 = 715827883;
    const int32_t x = a + (1 << 28);          /* a + 1/8 */
    const int32_t x2 = qa_fp_mul(x, x);
    const int32_t x3 = qa_fp_mul(x2, x);
    const int32_t x4 = qa_fp_mul(x2, x2);
    const int32_t x4_over_4 = qa_fp_mul_pot(x4, -2);
    const int32_t poly = qa_fp_mul_pot(qa_fp_mul(x4_over_4 + x3, constant_1_over_3) + x2, -1);
    return constant_term + qa_fp_mul(constant_term, x + poly);
}

/* gemmlowp exp_on_negative_values for a Q5.26 input (a <= 0), Q0.31 result. */
static int32_t qa_exp_on_negative_values_q5(int32_t a)
{
    enum { kFractionalBits = 26 };
    const int32_t one_quarter = 1 << (kFractionalBits - 2);
    const int32_t mask = one_quarter - 1;
    const int32_t a_mod_quarter_minus_one_quarter = (a & mask) - one_quarter;
    /* Rescale<0> from Q5.26: saturating multiply by 2^5. */
    int32_t result = qa_exp_on_interval_neg_quarter_0(qa_fp_mul_pot(a_mod_quarter_minus_one_quarter, 5));
    const int32_t remainder = a_mod_quarter_minus_one_quarter - a;
    /* Barrel shifter: multiply by exp(-2^k) for every set bit k of the remainder. */
    static const int32_t multipliers[7] = {1672461947, 1302514674, 790015084, 290630308, 39332535, 720401, 242};
    for (int k = -2; k <= 4; ++k) {
        if (remainder & (1 << (kFractionalBits + k))) result = qa_fp_mul(result, multipliers[k + 2]);
    }
    /* (kIntegerBits == 5: gemmlowp's clamp below -32 does not apply.) */
    if (a == 0) result = INT32_MAX; /* FixedPoint<int32, 0>::One() */
    return result;
}

/* gemmlowp one_over_one_plus_x_for_x_in_0_1 (Q0.31 in and out): Newton-Raphson for
 * 1 / (1 + x), 3 iterations in Q2.29. */
static int32_t qa_one_over_one_plus_x_for_x_in_0_1(int32_t a)
{
    /* RoundingHalfSum(a, One()) with One() = INT32_MAX in Q0.31 */
    const int64_t sum = (int64_t)a + (int64_t)INT32_MAX;
    const int64_t sign = sum >= 0 ? 1 : -1;
    const int32_t half_denominator = (int32_t)((sum + sign) / 2);
    const int32_t constant_48_over_17 = 1515870810;
    const int32_t constant_neg_32_over_17 = -1010580540;
    int32_t x = constant_48_over_17 + qa_fp_mul(half_denominator, constant_neg_32_over_17);
    for (int i = 0; i < 3; ++i) {
        const int32_t half_denominator_times_x = qa_fp_mul(half_denominator, x);
        const int32_t one_minus = (1 << 29) - half_denominator_times_x; /* F2::One() - ... */
        x = x + qa_fp_mul_pot(qa_fp_mul(x, one_minus), 2);                /* Rescale<2> from Q4.27 */
    }
    return qa_fp_mul_pot(x, 1); /* Rescale<0>(ExactMulByPot<-1>(x)) */
}

static int qa_clz32(uint32_t x)
{
    if (x == 0u) return 32;
    return __builtin_clz(x);
}

void qa_softmax(const qa_softmax_params *p, const int8_t *input, int8_t *output)
{
    enum { kAccumulationIntegerBits = 12 };
    for (int32_t r = 0; r < p->outer_size; ++r) {
        const int8_t *in = input + r * p->depth;
        int8_t *out = output + r * p->depth;
        int32_t max_in_row = INT8_MIN;
        for (int32_t c = 0; c < p->depth; ++c) max_in_row = qa_max32(max_in_row, in[c]);

        int32_t sum_of_exps = 0; /* Q12.19 */
        for (int32_t c = 0; c < p->depth; ++c) {
            const int32_t diff = (int32_t)in[c] - max_in_row;
            if (diff >= p->diff_min) {
                const int32_t scaled = qa_multiply_by_quantized_multiplier_greater_than_one(diff, p->input_multiplier,
                                                                                         p->input_left_shift);
                sum_of_exps += qa_fp_mul_pot(qa_exp_on_negative_values_q5(scaled), -kAccumulationIntegerBits);
            }
        }

        /* GetReciprocal(sum_of_exps, 12, &num_bits_over_unit) */
        const int headroom_plus_one = qa_clz32((uint32_t)sum_of_exps);
        const int num_bits_over_unit = kAccumulationIntegerBits - headroom_plus_one;
        const int32_t shifted_sum_minus_one =
            (int32_t)(((uint32_t)sum_of_exps << headroom_plus_one) - (UINT32_C(1) << 31));
        const int32_t shifted_scale = qa_one_over_one_plus_x_for_x_in_0_1(shifted_sum_minus_one);

        for (int32_t c = 0; c < p->depth; ++c) {
            const int32_t diff = (int32_t)in[c] - max_in_row;
            if (diff >= p->diff_min) {
                const int32_t scaled = qa_multiply_by_quantized_multiplier_greater_than_one(diff, p->input_multiplier,
                                                                                         p->input_left_shift);
                const int32_t exp_in_0 = qa_exp_on_negative_values_q5(scaled);
                const int32_t unsat = qa_rounding_divide_by_pot(qa_fp_mul(shifted_scale, exp_in_0),
                                                                num_bits_over_unit + 31 - 8);
                out[c] = (int8_t)qa_clamp32(unsat + INT8_MIN, INT8_MIN, INT8_MAX);
            } else {
                out[c] = INT8_MIN;
            }
        }
    }
}
