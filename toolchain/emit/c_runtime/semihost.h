/* Minimal Arm semihosting (BKPT 0xAB on M-profile) for bare-metal images run under
 * `qemu-system-arm -semihosting-config enable=on,target=native`.
 * Only what the firmware tests and emitted models need: console output, host files,
 * and exit with a status code (SYS_EXIT_EXTENDED, so QEMU's exit code is the status). */
#ifndef QASSURE_SEMIHOST_H
#define QASSURE_SEMIHOST_H

#include <stddef.h>
#include <stdint.h>

/* Open modes of SYS_OPEN (ISO C fopen equivalents). */
#define QA_SH_MODE_RB 1 /* "rb" */
#define QA_SH_MODE_WB 5 /* "wb" */

void qa_sh_write0(const char *s);                      /* SYS_WRITE0: NUL-terminated text to the console */
int32_t qa_sh_open(const char *path, int32_t mode);    /* SYS_OPEN: handle, or -1 */
int32_t qa_sh_close(int32_t handle);                   /* SYS_CLOSE */
/* SYS_READ / SYS_WRITE return the number of bytes actually transferred (not the
 * semihosting "bytes left" value). */
size_t qa_sh_read(int32_t handle, void *buf, size_t len);
size_t qa_sh_write(int32_t handle, const void *buf, size_t len);
uint32_t qa_sh_clock_cs(void);                         /* SYS_CLOCK: centiseconds since start */
void qa_sh_exit(int32_t status) __attribute__((noreturn)); /* SYS_EXIT_EXTENDED */

#endif
