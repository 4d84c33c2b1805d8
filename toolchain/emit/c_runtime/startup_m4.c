/* Bare-metal start-up for Cortex-M4 (mps2-an386) and other ARMv7-M/v8-M cores:
 * vector table, .data copy / .bss clear, FPU enable, static constructors, then main();
 * main's return value becomes the semihosting exit status (QEMU's exit code). */
#include <stdint.h>

#include "semihost.h"

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack;
extern int main(void);
extern void __libc_init_array(void);

void Reset_Handler(void);
void Default_Handler(void);

/* Any unexpected exception ends the run with a distinctive status instead of hanging
 * QEMU until the harness timeout. */
void Default_Handler(void)
{
    qa_sh_write0("qassure: unexpected exception (HardFault or IRQ)\n");
    qa_sh_exit(97);
}

__attribute__((section(".isr_vector"), used)) static void (*const vector_table[16])(void) = {
    (void (*)(void))(&_estack), /* initial main stack pointer */
    Reset_Handler,              /* reset */
    Default_Handler,            /* NMI */
    Default_Handler,            /* HardFault */
    Default_Handler,            /* MemManage */
    Default_Handler,            /* BusFault */
    Default_Handler,            /* UsageFault */
    0, 0, 0, 0,                 /* reserved */
    Default_Handler,            /* SVCall */
    Default_Handler,            /* DebugMonitor */
    0,                          /* reserved */
    Default_Handler,            /* PendSV */
    Default_Handler,            /* SysTick */
};

void Reset_Handler(void)
{
    uint32_t *src = &_sidata;
    uint32_t *dst = &_sdata;
    while (dst < &_edata) *dst++ = *src++;
    for (dst = &_sbss; dst < &_ebss; ++dst) *dst = 0u;

#if defined(__ARM_FP)
    /* CPACR: full access to coprocessors CP10/CP11 (the FPU), then barrier. */
    *(volatile uint32_t *)0xE000ED88u |= (0xFu << 20);
    __asm__ volatile("dsb\n\tisb" ::: "memory");
#endif
    __libc_init_array();
    qa_sh_exit(main());
}

/* newlib's __libc_init_array calls _init(); nothing to do with -nostartfiles. */
void _init(void) {}
void _fini(void) {}
