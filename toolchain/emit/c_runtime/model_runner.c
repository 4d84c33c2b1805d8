/* Runs an emitted model (model.h / model.c) on a batch of input vectors in ONE boot.
 *
 * Host files through semihosting (little endian):
 *   in.bin  = u32 count, u32 input_bytes (must equal QA_MODEL_INPUT_SIZE), count input vectors
 *   out.bin = u32 count, u32 output_bytes (QA_MODEL_OUTPUT_SIZE), count output vectors
 * Exit status: 0 all vectors ran; 2 I/O or size mismatch; 3 model_invoke failed. */
#include <stdint.h>

#include "model.h"
#include "semihost.h"

static int8_t input[QA_MODEL_INPUT_SIZE];
static int8_t output[QA_MODEL_OUTPUT_SIZE];

static void fail(const char *msg, int32_t status)
{
    qa_sh_write0("model_runner: ");
    qa_sh_write0(msg);
    qa_sh_write0("\n");
    qa_sh_exit(status);
}

int main(void)
{
    const int32_t fin = qa_sh_open("in.bin", QA_SH_MODE_RB);
    const int32_t fout = qa_sh_open("out.bin", QA_SH_MODE_WB);
    if (fin < 0 || fout < 0) fail("cannot open in.bin / out.bin", 2);
    uint32_t hdr[2];
    if (qa_sh_read(fin, hdr, sizeof hdr) != sizeof hdr) fail("truncated header", 2);
    if (hdr[1] != (uint32_t)QA_MODEL_INPUT_SIZE) fail("input size differs from the model's", 2);
    const uint32_t out_hdr[2] = {hdr[0], (uint32_t)QA_MODEL_OUTPUT_SIZE};
    qa_sh_write(fout, out_hdr, sizeof out_hdr);
    for (uint32_t i = 0; i < hdr[0]; ++i) {
        if (qa_sh_read(fin, input, sizeof input) != sizeof input) fail("truncated input vector", 2);
        if (model_invoke(input, output) != 0) fail("model_invoke failed", 3);
        qa_sh_write(fout, output, sizeof output);
    }
    qa_sh_close(fin);
    qa_sh_close(fout);
    return 0;
}
