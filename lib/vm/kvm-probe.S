/*
 * pim doctor's KVM test guest (lib/vm/doctor.ts holds these bytes, and
 * test/unit/vmcare.test.ts checks that they are what this file assembles to):
 *
 *   as --32 -o probe.o kvm-probe.S
 *   ld -m elf_i386 -Ttext 0 -e 0 --oformat binary -o probe.bin probe.o
 *
 * A 64 KiB firmware image for `qemu -bios` (mapped at 0xF0000). From the reset
 * vector (F000:FFF0) it goes to protected mode, then to long mode with paging
 * (one 2 MiB page at 0), runs 2^20 iterations that add, write and read RAM,
 * checks the sum, and writes 0x2a to the isa-debug-exit port (0xf4) when it
 * is right (QEMU exits with status (0x2a << 1) | 1 = 85), 0x15 when not (43).
 */
        .code16
        .org 0
start16:
        cli
        xorw  %ax, %ax
        movw  %ax, %ds
        movw  %cs, %ax
        movw  %ax, %ds
        lgdtl (gdtr - start16)
        movl  %cr0, %eax
        orl   $1, %eax
        movl  %eax, %cr0
        ljmpl $0x08, $(0xF0000 + start32 - start16)

        .code32
start32:
        movw  $0x10, %ax
        movw  %ax, %ds
        movw  %ax, %es
        movw  %ax, %ss
        movl  $0x8000, %esp
        /* page tables: PML4 at 0x1000 -> PDPT at 0x2000 -> PD at 0x3000, one 2 MiB page at 0 */
        movl  $0x1000, %edi
        movl  $0x3000/4, %ecx
        xorl  %eax, %eax
        rep stosl
        movl  $0x2003, 0x1000
        movl  $0x3003, 0x2000
        movl  $0x0083, 0x3000
        movl  $0x1000, %eax
        movl  %eax, %cr3
        movl  %cr4, %eax
        orl   $0x20, %eax          /* PAE */
        movl  %eax, %cr4
        movl  $0xC0000080, %ecx    /* EFER */
        rdmsr
        orl   $0x100, %eax         /* LME */
        wrmsr
        movl  %cr0, %eax
        orl   $0x80000000, %eax    /* PG */
        movl  %eax, %cr0
        ljmpl $0x18, $(0xF0000 + start64 - start16)

        .code64
start64:
        movl  $0x100000, %ecx      /* 2^20 iterations */
        xorq  %rax, %rax
        movq  $0x10000, %rdi
1:      addq  %rcx, %rax
        movq  %rax, (%rdi)
        movq  (%rdi), %rdx
        decl  %ecx
        jnz   1b
        /* 1 + 2 + ... + 2^20 = 2^19 * (2^20 + 1) = 0x8000080000 */
        movabsq $0x8000080000, %rbx
        cmpq  %rbx, %rdx
        movb  $0x2a, %al
        je    2f
        movb  $0x15, %al
2:      outb  %al, $0xf4
3:      hlt
        jmp   3b

        .align 8
gdt:    .quad 0
        .quad 0x00cf9a000000ffff   /* 0x08: code, 32-bit */
        .quad 0x00cf92000000ffff   /* 0x10: data */
        .quad 0x00af9a000000ffff   /* 0x18: code, 64-bit */
gdtr:   .word gdtr - gdt - 1
        .long 0xF0000 + gdt - start16

        .code16
        .org 0xfff0
reset:  ljmp  $0xf000, $0
        .org 0x10000
