/* qassure int8 kernel library (C99, no malloc, int32 accumulation).
 *
 * Every kernel reproduces, bit for bit, the TensorFlow Lite Micro *reference* int8
 * kernel named in its comment (tensorflow/lite/kernels/internal/reference/...), with
 * the arithmetic of TFLM's common.h / gemmlowp fixedpoint.h.  Kernels take explicit
 * parameter structs that a code generator fills from qassure's prepared op records;
 * sign conventions follow TFLM: *input_offset = -input zero point*, *output_offset =
 * +output zero point*; shifts are TFLM "exponents" (positive = left shift).
 *
 * Rounding of MultiplyByQuantizedMultiplier: double rounding (TFLM / CMSIS-NN default)
 * unless compiled with -DQA_SINGLE_ROUNDING=1 (= TFLITE_SINGLE_ROUNDING /
 * CMSIS_NN_USE_SINGLE_ROUNDING).
 *
 * Layouts: activations NHWC; CONV_2D filter OHWI; DEPTHWISE_CONV_2D filter
 * 1 x H x W x (C*multiplier); FULLY_CONNECTED filter [out][in].
 */
#ifndef QASSURE_KERNELS_H
#define QASSURE_KERNELS_H

#include <stdint.h>

#ifndef QA_SINGLE_ROUNDING
#define QA_SINGLE_ROUNDING 0
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Link-time rounding guard: the library defines exactly one of these, so code built for
 * the other flavour (e.g. an emitted model.c) fails to link instead of running wrong. */
#if QA_SINGLE_ROUNDING
extern const int32_t qa_kernels_single_rounding;
#define QA_KERNELS_ROUNDING_GUARD qa_kernels_single_rounding
#else
extern const int32_t qa_kernels_double_rounding;
#define QA_KERNELS_ROUNDING_GUARD qa_kernels_double_rounding
#endif

/* ---- rounding primitives (TFLM common.h / gemmlowp fixedpoint.h) ---------------- */
int32_t qa_saturating_rounding_doubling_high_mul(int32_t a, int32_t b);
int32_t qa_rounding_divide_by_pot(int32_t x, int exponent);
int32_t qa_multiply_by_quantized_multiplier(int32_t x, int32_t multiplier, int shift);
int32_t qa_multiply_by_quantized_multiplier_greater_than_one(int32_t x, int32_t multiplier, int left_shift);
int32_t qa_multiply_by_quantized_multiplier_smaller_than_one_exp(int32_t x, int32_t multiplier, int shift);

/* ---- FULLY_CONNECTED --------------------------------------------------------------- */
typedef struct {
    int32_t input_offset;  /* -input zero point */
    int32_t filter_offset; /* -filter zero point (0 for symmetric int8 weights) */
    int32_t output_offset; /* +output zero point */
    int32_t act_min;       /* clamp after requantization (fused activation) */
    int32_t act_max;
    int32_t batches;      /* rows of the input */
    int32_t accum_depth;  /* input features (filter row length) */
    int32_t output_depth; /* output features (filter rows) */
    int32_t per_channel;  /* 0: multiplier[0]/shift[0] for all outputs; 1: one per output */
    const int32_t *output_multiplier;
    const int32_t *output_shift;
} qa_fc_params;

void qa_fully_connected(const qa_fc_params *p, const int8_t *input, const int8_t *filter,
                        const int32_t *bias /* nullable, [output_depth] */, int8_t *output);

/* ---- CONV_2D / DEPTHWISE_CONV_2D (per-channel): one geometry record ------------------ */
typedef struct {
    int32_t input_offset;  /* -input zero point */
    int32_t output_offset; /* +output zero point */
    int32_t act_min, act_max;
    int32_t stride_h, stride_w;
    int32_t dilation_h, dilation_w;
    int32_t pad_h, pad_w; /* top / left padding (TFLM padding_values.height/width) */
    int32_t batches, input_h, input_w, input_c;
    int32_t filter_h, filter_w;
    int32_t filter_c;         /* CONV_2D only: filter_c < input_c is a grouped convolution */
    int32_t depth_multiplier; /* DEPTHWISE_CONV_2D only: output_c = input_c * depth_multiplier */
    int32_t output_h, output_w, output_c;
    const int32_t *output_multiplier; /* [output_c] */
    const int32_t *output_shift;      /* [output_c] */
} qa_conv_params;

/* CONV_2D: filter OHWI [output_c][filter_h][filter_w][filter_c]. */
void qa_conv2d(const qa_conv_params *p, const int8_t *input, const int8_t *filter,
               const int32_t *bias /* nullable */, int8_t *output);

/* TRANSPOSE_CONV: filter OHWI [output_c][filter_h][filter_w][input_c]; no dilation, batch 1. */
void qa_transpose_conv2d(const qa_conv_params *p, const int8_t *input, const int8_t *filter,
                         const int32_t *bias /* nullable */, int8_t *output);

/* DEPTHWISE_CONV_2D: filter 1 x filter_h x filter_w x output_c (filter_c unused). */
void qa_depthwise_conv2d(const qa_conv_params *p, const int8_t *input, const int8_t *filter,
                         const int32_t *bias /* nullable */, int8_t *output);

/* ---- AVERAGE_POOL_2D / MAX_POOL_2D --------------------------------------------------- */
typedef struct {
    int32_t stride_h, stride_w;
    int32_t filter_h, filter_w;
    int32_t pad_h, pad_w;
    int32_t act_min, act_max;
    int32_t batches, input_h, input_w, channels;
    int32_t output_h, output_w;
} qa_pool_params;

/* Returns 0 on success, -1 when a window has no valid element (TFLM returns false). */
int qa_average_pool(const qa_pool_params *p, const int8_t *input, int8_t *output);
void qa_max_pool(const qa_pool_params *p, const int8_t *input, int8_t *output);

/* ---- ADD / MUL (elementwise, equal shapes, no broadcasting) -------------------------- */
typedef struct {
    int32_t input1_offset, input2_offset; /* -zero points */
    int32_t output_offset;                /* +zero point */
    int32_t left_shift;                   /* 20 for int8 */
    int32_t input1_multiplier, input1_shift;
    int32_t input2_multiplier, input2_shift;
    int32_t output_multiplier, output_shift;
    int32_t act_min, act_max;
    int32_t size;
} qa_add_params;

void qa_add(const qa_add_params *p, const int8_t *input1, const int8_t *input2, int8_t *output);
/* SUB: the same parameters (sub_common.cc computes them in float), the second term subtracted. */
void qa_sub(const qa_add_params *p, const int8_t *input1, const int8_t *input2, int8_t *output);

typedef struct {
    int32_t input1_offset, input2_offset;
    int32_t output_offset;
    int32_t output_multiplier, output_shift;
    int32_t act_min, act_max;
    int32_t size;
} qa_mul_params;

void qa_mul(const qa_mul_params *p, const int8_t *input1, const int8_t *input2, int8_t *output);

/* ---- PAD (rank <= 4, dims right-aligned: pad a rank-2 tensor with dims[2..3]) -------- */
typedef struct {
    int32_t input_dims[4];
    int32_t pad_before[4];
    int32_t pad_after[4];
    int32_t pad_value; /* output zero point (TFLM PAD without constant_values) */
} qa_pad_params;

void qa_pad(const qa_pad_params *p, const int8_t *input, int8_t *output);

/* ---- CONCATENATION along the last axis ----------------------------------------------- */
typedef struct {
    int32_t num_inputs;
    int32_t outer_size;        /* product of all dims but the last */
    const int32_t *axis_sizes; /* [num_inputs] last-dim size of each input */
} qa_concat_params;

void qa_concatenation(const qa_concat_params *p, const int8_t *const *inputs, int8_t *output);

/* ---- MEAN over any axes of a rank <= 4 tensor (dims right-aligned, leading 1s) ----- */
typedef struct {
    int32_t dims[4];          /* input shape */
    int32_t reduced[4];       /* 1 for every axis the mean runs over */
    int32_t input_zero_point; /* subtracted count times from the int32 sum */
    int32_t count;            /* elements per output: product of the reduced dims */
    int32_t multiplier;       /* s_in / s_out with 1/count folded in (prepare.Mean) */
    int32_t shift;
    int32_t output_offset;    /* +output zero point */
} qa_mean_params;

/* Output: the kept axes in row-major order (keep_dims only changes the shape). */
void qa_mean(const qa_mean_params *p, const int8_t *input, int8_t *output);

/* ---- TRANSPOSE (rank <= 4, dims right-aligned, leading 1s; perm extended to match) -------- */
typedef struct {
    int32_t input_dims[4];
    int32_t perm[4];          /* output axis a is input axis perm[a] */
} qa_transpose_params;

void qa_transpose(const qa_transpose_params *p, const int8_t *input, int8_t *output);

/* ---- STRIDED_SLICE (start and count of every axis resolved by the generator) ------------------ */
typedef struct {
    int32_t input_dims[4];
    int32_t start[4];         /* first index taken along each axis */
    int32_t stride[4];        /* step between indices (negative: backwards) */
    int32_t count[4];         /* indices taken along each axis */
} qa_strided_slice_params;

void qa_strided_slice(const qa_strided_slice_params *p, const int8_t *input, int8_t *output);

/* ---- PRELU (alpha broadcast to the input's shape by the generator) ------------------------ */
typedef struct {
    int32_t input_offset;     /* -input zero point */
    int32_t alpha_offset;     /* -alpha zero point */
    int32_t output_offset;    /* +output zero point */
    int32_t multiplier_1, shift_1; /* s_in / s_out (x >= 0) */
    int32_t multiplier_2, shift_2; /* s_in s_alpha / s_out (x < 0, times alpha) */
    int32_t size;
} qa_prelu_params;

void qa_prelu(const qa_prelu_params *p, const int8_t *input, const int8_t *alpha, int8_t *output);

/* ---- REDUCE_MAX (int8, input and output quantization equal) ------------------------------- */
typedef struct {
    int32_t dims[4];          /* input shape padded to 4-D */
    int32_t reduced[4];       /* 1 where the axis is reduced */
} qa_reduce_max_params;

/* Output: the kept axes in row-major order, each the largest input over the reduced axes. */
void qa_reduce_max(const qa_reduce_max_params *p, const int8_t *input, int8_t *output);

/* ---- QUANTIZE int8 -> int8 (requantize) ------------------------------------------------ */
typedef struct {
    int32_t input_zero_point;
    int32_t output_zero_point;
    int32_t multiplier, shift; /* s_in / s_out */
    int32_t size;
} qa_requantize_params;

void qa_requantize(const qa_requantize_params *p, const int8_t *input, int8_t *output);

/* ---- LOGISTIC / TANH / any elementwise int8 map: 256-entry table ---------------------- */
/* output[i] = table[input[i] + 128]; the Python side computes the table with the
 * target's exact recipe (there are only 256 int8 inputs). */
void qa_lookup_table(const int8_t table[256], const int8_t *input, int8_t *output, int32_t size);

/* ---- SOFTMAX int8 -> int8 (output scale 1/256, zero point -128) ----------------------- */
typedef struct {
    int32_t outer_size; /* rows */
    int32_t depth;      /* classes (last axis) */
    int32_t input_multiplier; /* PreprocessSoftmaxScaling(beta, input_scale, 5) */
    int32_t input_left_shift;
    int32_t diff_min; /* -CalculateInputRadius(5, input_left_shift, 31) */
} qa_softmax_params;

void qa_softmax(const qa_softmax_params *p, const int8_t *input, int8_t *output);

#ifdef __cplusplus
}
#endif
#endif
