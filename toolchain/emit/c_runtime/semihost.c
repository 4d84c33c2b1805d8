/* Arm semihosting calls (Arm "Semihosting for AArch32 and AArch64", v2):
 * operation number in r0, pointer to a parameter block in r1, result in r0.
 * On M-profile cores the trap instruction is BKPT 0xAB. */
#include "semihost.h"

#define SYS_OPEN 0x01
#define SYS_CLOSE 0x02
#define SYS_WRITE0 0x04
#define SYS_WRITE 0x05
#define SYS_READ 0x06
#define SYS_CLOCK 0x10
#define SYS_EXIT 0x18
#define SYS_EXIT_EXTENDED 0x20
#define ADP_STOPPED_APPLICATION_EXIT 0x20026

static int32_t qa_sh_call(int32_t op, const void *arg)
{
    register int32_t r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

void qa_sh_write0(const char *s) { (void)qa_sh_call(SYS_WRITE0, s); }

int32_t qa_sh_open(const char *path, int32_t mode)
{
    size_t n = 0;
    while (path[n] != '\0') ++n;
    uint32_t block[3] = {(uint32_t)(uintptr_t)path, (uint32_t)mode, (uint32_t)n};
    return qa_sh_call(SYS_OPEN, block);
}

int32_t qa_sh_close(int32_t handle)
{
    uint32_t block[1] = {(uint32_t)handle};
    return qa_sh_call(SYS_CLOSE, block);
}

size_t qa_sh_read(int32_t handle, void *buf, size_t len)
{
    uint32_t block[3] = {(uint32_t)handle, (uint32_t)(uintptr_t)buf, (uint32_t)len};
    int32_t left = qa_sh_call(SYS_READ, block);
    return (left < 0) ? 0 : len - (size_t)left;
}

size_t qa_sh_write(int32_t handle, const void *buf, size_t len)
{
    uint32_t block[3] = {(uint32_t)handle, (uint32_t)(uintptr_t)buf, (uint32_t)len};
    int32_t left = qa_sh_call(SYS_WRITE, block);
    return (left < 0) ? 0 : len - (size_t)left;
}

uint32_t qa_sh_clock_cs(void) { return (uint32_t)qa_sh_call(SYS_CLOCK, 0); }

void qa_sh_exit(int32_t status)
{
    uint32_t block[2] = {ADP_STOPPED_APPLICATION_EXIT, (uint32_t)status};
    (void)qa_sh_call(SYS_EXIT_EXTENDED, block);
    /* Hosts without SYS_EXIT_EXTENDED: plain SYS_EXIT (status lost). */
    (void)qa_sh_call(SYS_EXIT, (const void *)ADP_STOPPED_APPLICATION_EXIT);
    for (;;) {
    }
}
