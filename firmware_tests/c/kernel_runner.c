/* Firmware test runner: reads test records from the host file "in.bin" through
 * semihosting, runs the requested qassure kernel on the device, and writes the raw
 * outputs to "out.bin".  One boot runs any number of records (boots are the slow part).
 *
 * Record (little endian): u32 op, u32 payload_bytes, payload.  The payload is a list of
 * 4-byte aligned fields read in order (int32 scalars, int8 / int32 arrays padded
 * to 4 bytes), matching firmware_tests/harness.py:Payload.  Output record: u32 op,
 * u32 bytes, bytes (padded to 4).  op 0 ends the run.  Exit status 0 = all records run. */
#include <stdint.h>
#include <string.h>

#include "qassure_kernels.h"
#include "semihost.h"

enum {
    OP_END = 0,
    OP_SRDHM = 1,
    OP_RDBPOT = 2,
    OP_MBQM = 3,
    OP_FC = 10,
    OP_CONV = 11,
    OP_DWCONV = 12,
    OP_AVGPOOL = 13,
    OP_MAXPOOL = 14,
    OP_ADD = 15,
    OP_MUL = 16,
    OP_PAD = 17,
    OP_CONCAT = 18,
    OP_MEAN = 19,
    OP_LUT = 20,
    OP_SOFTMAX = 21,
    OP_REQUANTIZE = 22,
};

#define IN_CAP (512u * 1024u)
#define OUT_CAP (512u * 1024u)
static uint32_t in_buf[IN_CAP / 4];
static uint32_t out_buf[OUT_CAP / 4];

typedef struct {
    const uint8_t *p;
    const uint8_t *end;
    int bad;
} reader;

static const uint8_t *take(reader *r, uint32_t n)
{
    const uint32_t padded = (n + 3u) & ~3u;
    if ((uint32_t)(r->end - r->p) < padded) {
        r->bad = 1;
        return 0;
    }
    const uint8_t *q = r->p;
    r->p += padded;
    return q;
}
static int32_t rd_i32(reader *r)
{
    const uint8_t *q = take(r, 4);
    int32_t v = 0;
    if (q) memcpy(&v, q, 4);
    return v;
}
static void rd_i32x4(reader *r, int32_t v[4])
{
    for (int k = 0; k < 4; ++k) v[k] = rd_i32(r);
}
static const int8_t *rd_i8s(reader *r, int32_t n) { return (const int8_t *)take(r, (uint32_t)n); }
static const int32_t *rd_i32s(reader *r, int32_t n) { return (const int32_t *)take(r, (uint32_t)n * 4u); }

static void fail(const char *msg)
{
    qa_sh_write0("kernel_runner: ");
    qa_sh_write0(msg);
    qa_sh_write0("\n");
    qa_sh_exit(2);
}

/* CONV_2D and DEPTHWISE_CONV_2D share one record layout; the one field that differs
 * (filter_c for CONV_2D, depth_multiplier for DEPTHWISE_CONV_2D) comes after the padding. */
static void read_conv_params(reader *r, qa_conv_params *p, int depthwise)
{
    p->input_offset = rd_i32(r); p->output_offset = rd_i32(r); p->act_min = rd_i32(r); p->act_max = rd_i32(r);
    p->stride_h = rd_i32(r); p->stride_w = rd_i32(r); p->dilation_h = rd_i32(r); p->dilation_w = rd_i32(r);
    p->pad_h = rd_i32(r); p->pad_w = rd_i32(r);
    const int32_t extra = rd_i32(r);
    p->filter_c = depthwise ? 0 : extra;
    p->depth_multiplier = depthwise ? extra : 1;
    p->batches = rd_i32(r); p->input_h = rd_i32(r); p->input_w = rd_i32(r); p->input_c = rd_i32(r);
    p->filter_h = rd_i32(r); p->filter_w = rd_i32(r);
    p->output_h = rd_i32(r); p->output_w = rd_i32(r); p->output_c = rd_i32(r);
    p->output_multiplier = rd_i32s(r, p->output_c);
    p->output_shift = rd_i32s(r, p->output_c);
}

/* Runs one record; returns the number of output bytes written to out_buf. */
static uint32_t run_record(uint32_t op, reader *r)
{
    int8_t *o8 = (int8_t *)out_buf;
    int32_t *o32 = (int32_t *)out_buf;
    switch (op) {
    case OP_SRDHM: case OP_RDBPOT: case OP_MBQM: {
        const int32_t n = rd_i32(r);
        const int32_t *a = rd_i32s(r, n);
        const int32_t *b = rd_i32s(r, n);
        const int32_t *c = rd_i32s(r, n);
        if (r->bad) return 0;
        for (int32_t i = 0; i < n; ++i) {
            o32[i] = (op == OP_SRDHM)    ? qa_saturating_rounding_doubling_high_mul(a[i], b[i])
                     : (op == OP_RDBPOT) ? qa_rounding_divide_by_pot(a[i], (int)c[i])
                                         : qa_multiply_by_quantized_multiplier(a[i], b[i], (int)c[i]);
        }
        return (uint32_t)n * 4u;
    }
    case OP_FC: {
        qa_fc_params p;
        p.input_offset = rd_i32(r); p.filter_offset = rd_i32(r); p.output_offset = rd_i32(r);
        p.act_min = rd_i32(r); p.act_max = rd_i32(r);
        p.batches = rd_i32(r); p.accum_depth = rd_i32(r); p.output_depth = rd_i32(r);
        p.per_channel = rd_i32(r);
        const int32_t nm = p.per_channel ? p.output_depth : 1;
        p.output_multiplier = rd_i32s(r, nm);
        p.output_shift = rd_i32s(r, nm);
        const int32_t has_bias = rd_i32(r);
        const int32_t *bias = has_bias ? rd_i32s(r, p.output_depth) : 0;
        const int8_t *w = rd_i8s(r, p.output_depth * p.accum_depth);
        const int8_t *x = rd_i8s(r, p.batches * p.accum_depth);
        if (r->bad) return 0;
        qa_fully_connected(&p, x, w, bias, o8);
        return (uint32_t)(p.batches * p.output_depth);
    }
    case OP_CONV: case OP_DWCONV: {
        qa_conv_params p;
        read_conv_params(r, &p, op == OP_DWCONV);
        const int32_t has_bias = rd_i32(r);
        const int32_t *bias = has_bias ? rd_i32s(r, p.output_c) : 0;
        const int32_t filter_size = (op == OP_DWCONV) ? p.filter_h * p.filter_w * p.output_c
                                                      : p.output_c * p.filter_h * p.filter_w * p.filter_c;
        const int8_t *w = rd_i8s(r, filter_size);
        const int8_t *x = rd_i8s(r, p.batches * p.input_h * p.input_w * p.input_c);
        if (r->bad) return 0;
        if (op == OP_DWCONV) {
            qa_depthwise_conv2d(&p, x, w, bias, o8);
        } else {
            qa_conv2d(&p, x, w, bias, o8);
        }
        return (uint32_t)(p.batches * p.output_h * p.output_w * p.output_c);
    }
    case OP_AVGPOOL: case OP_MAXPOOL: {
        qa_pool_params p;
        p.stride_h = rd_i32(r); p.stride_w = rd_i32(r); p.filter_h = rd_i32(r); p.filter_w = rd_i32(r);
        p.pad_h = rd_i32(r); p.pad_w = rd_i32(r); p.act_min = rd_i32(r); p.act_max = rd_i32(r);
        p.batches = rd_i32(r); p.input_h = rd_i32(r); p.input_w = rd_i32(r); p.channels = rd_i32(r);
        p.output_h = rd_i32(r); p.output_w = rd_i32(r);
        const int8_t *x = rd_i8s(r, p.batches * p.input_h * p.input_w * p.channels);
        if (r->bad) return 0;
        if (op == OP_AVGPOOL) {
            if (qa_average_pool(&p, x, o8) != 0) fail("average pool window without valid elements");
        } else {
            qa_max_pool(&p, x, o8);
        }
        return (uint32_t)(p.batches * p.output_h * p.output_w * p.channels);
    }
    case OP_ADD: case OP_MUL: {
        qa_add_params pa;
        qa_mul_params pm;
        int32_t size;
        if (op == OP_ADD) {
            pa.input1_offset = rd_i32(r); pa.input2_offset = rd_i32(r); pa.output_offset = rd_i32(r);
            pa.left_shift = rd_i32(r);
            pa.input1_multiplier = rd_i32(r); pa.input1_shift = rd_i32(r);
            pa.input2_multiplier = rd_i32(r); pa.input2_shift = rd_i32(r);
            pa.output_multiplier = rd_i32(r); pa.output_shift = rd_i32(r);
            pa.act_min = rd_i32(r); pa.act_max = rd_i32(r); size = pa.size = rd_i32(r);
        } else {
            pm.input1_offset = rd_i32(r); pm.input2_offset = rd_i32(r); pm.output_offset = rd_i32(r);
            pm.output_multiplier = rd_i32(r); pm.output_shift = rd_i32(r);
            pm.act_min = rd_i32(r); pm.act_max = rd_i32(r); size = pm.size = rd_i32(r);
        }
        const int8_t *a = rd_i8s(r, size);
        const int8_t *b = rd_i8s(r, size);
        if (r->bad) return 0;
        if (op == OP_ADD) {
            qa_add(&pa, a, b, o8);
        } else {
            qa_mul(&pm, a, b, o8);
        }
        return (uint32_t)size;
    }
    case OP_PAD: {
        qa_pad_params p;
        int32_t n_in = 1, n_out = 1;
        rd_i32x4(r, p.input_dims);
        rd_i32x4(r, p.pad_before);
        rd_i32x4(r, p.pad_after);
        p.pad_value = rd_i32(r);
        for (int k = 0; k < 4; ++k) n_in *= p.input_dims[k];
        for (int k = 0; k < 4; ++k) n_out *= p.input_dims[k] + p.pad_before[k] + p.pad_after[k];
        const int8_t *x = rd_i8s(r, n_in);
        if (r->bad) return 0;
        qa_pad(&p, x, o8);
        return (uint32_t)n_out;
    }
    case OP_CONCAT: {
        enum { MAX_INPUTS = 8 };
        const int8_t *inputs[MAX_INPUTS];
        qa_concat_params p;
        p.num_inputs = rd_i32(r);
        p.outer_size = rd_i32(r);
        if (p.num_inputs > MAX_INPUTS) fail("too many concat inputs");
        p.axis_sizes = rd_i32s(r, p.num_inputs);
        if (r->bad) return 0;
        int32_t total = 0;
        for (int32_t i = 0; i < p.num_inputs; ++i) {
            inputs[i] = rd_i8s(r, p.outer_size * p.axis_sizes[i]);
            total += p.outer_size * p.axis_sizes[i];
        }
        if (r->bad) return 0;
        qa_concatenation(&p, inputs, o8);
        return (uint32_t)total;
    }
    case OP_MEAN: {
        qa_mean_params p;
        int32_t n_in = 1, n_out = 1;
        rd_i32x4(r, p.dims);
        rd_i32x4(r, p.reduced);
        p.input_zero_point = rd_i32(r); p.count = rd_i32(r);
        p.multiplier = rd_i32(r); p.shift = rd_i32(r); p.output_offset = rd_i32(r);
        for (int k = 0; k < 4; ++k) n_in *= p.dims[k];
        for (int k = 0; k < 4; ++k) n_out *= p.reduced[k] ? 1 : p.dims[k];
        const int8_t *x = rd_i8s(r, n_in);
        if (r->bad) return 0;
        qa_mean(&p, x, o8);
        return (uint32_t)n_out;
    }
    case OP_REQUANTIZE: {
        qa_requantize_params p;
        p.input_zero_point = rd_i32(r); p.output_zero_point = rd_i32(r);
        p.multiplier = rd_i32(r); p.shift = rd_i32(r); p.size = rd_i32(r);
        const int8_t *x = rd_i8s(r, p.size);
        if (r->bad) return 0;
        qa_requantize(&p, x, o8);
        return (uint32_t)p.size;
    }
    case OP_LUT: {
        const int32_t n = rd_i32(r);
        const int8_t *table = rd_i8s(r, 256);
        const int8_t *x = rd_i8s(r, n);
        if (r->bad) return 0;
        qa_lookup_table(table, x, o8, n);
        return (uint32_t)n;
    }
    case OP_SOFTMAX: {
        qa_softmax_params p;
        p.outer_size = rd_i32(r); p.depth = rd_i32(r);
        p.input_multiplier = rd_i32(r); p.input_left_shift = rd_i32(r); p.diff_min = rd_i32(r);
        const int8_t *x = rd_i8s(r, p.outer_size * p.depth);
        if (r->bad) return 0;
        qa_softmax(&p, x, o8);
        return (uint32_t)(p.outer_size * p.depth);
    }
    default:
        fail("unknown op");
    }
    return 0;
}

int main(void)
{
    const int32_t fin = qa_sh_open("in.bin", QA_SH_MODE_RB);
    const int32_t fout = qa_sh_open("out.bin", QA_SH_MODE_WB);
    if (fin < 0 || fout < 0) fail("cannot open in.bin / out.bin");
    uint32_t records = 0;
    for (;;) {
        uint32_t hdr[2];
        if (qa_sh_read(fin, hdr, sizeof hdr) != sizeof hdr) fail("truncated record header");
        if (hdr[0] == OP_END) break;
        if (hdr[1] > IN_CAP) fail("record larger than the input buffer");
        if (qa_sh_read(fin, in_buf, hdr[1]) != hdr[1]) fail("truncated record payload");
        reader r = {(const uint8_t *)in_buf, (const uint8_t *)in_buf + hdr[1], 0};
        const uint32_t n = run_record(hdr[0], &r);
        if (r.bad) fail("payload shorter than its fields");
        const uint32_t out_hdr[2] = {hdr[0], n};
        qa_sh_write(fout, out_hdr, sizeof out_hdr);
        qa_sh_write(fout, out_buf, (n + 3u) & ~3u);
        ++records;
    }
    qa_sh_close(fin);
    qa_sh_close(fout);
    return 0;
}
