// Fiber switch: hand-written for x86-64 (System V) and aarch64 (AAPCS64), ucontext elsewhere.
#include "fiber.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

extern "C" void alexnet_emu_switch(void** save_sp, void* new_sp);
extern "C" void alexnet_emu_fiber_start();

#if defined(__x86_64__)
// Saved frame, from the stored stack pointer upwards:
//   [mxcsr:4][x87 cw:2][pad:2] r15 r14 r13 r12 rbx rbp <return address>
// A new fiber's return address is alexnet_emu_fiber_start, which calls r13(r12).
asm(R"(
    .text
    .globl alexnet_emu_switch
    .type alexnet_emu_switch, @function
alexnet_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size alexnet_emu_switch, .-alexnet_emu_switch

    .globl alexnet_emu_fiber_start
    .type alexnet_emu_fiber_start, @function
alexnet_emu_fiber_start:
    movq %r12, %rdi
    callq *%r13
    ud2
    .size alexnet_emu_fiber_start, .-alexnet_emu_fiber_start
    .section .note.GNU-stack,"",@progbits
    .text
)");
#define EMU_HAVE_ASM_SWITCH 1
#elif defined(__aarch64__)
// Saved frame (160 bytes): x19..x30 (12 regs) then d8..d15 (8 regs).
// A new fiber's x30 is alexnet_emu_fiber_start, which calls x20(x19).
asm(R"(
    .text
    .globl alexnet_emu_switch
    .type alexnet_emu_switch, %function
alexnet_emu_switch:
    sub sp, sp, #160
    stp x19, x20, [sp, #0]
    stp x21, x22, [sp, #16]
    stp x23, x24, [sp, #32]
    stp x25, x26, [sp, #48]
    stp x27, x28, [sp, #64]
    stp x29, x30, [sp, #80]
    stp d8, d9, [sp, #96]
    stp d10, d11, [sp, #112]
    stp d12, d13, [sp, #128]
    stp d14, d15, [sp, #144]
    mov x9, sp
    str x9, [x0]
    mov sp, x1
    ldp x19, x20, [sp, #0]
    ldp x21, x22, [sp, #16]
    ldp x23, x24, [sp, #32]
    ldp x25, x26, [sp, #48]
    ldp x27, x28, [sp, #64]
    ldp x29, x30, [sp, #80]
    ldp d8, d9, [sp, #96]
    ldp d10, d11, [sp, #112]
    ldp d12, d13, [sp, #128]
    ldp d14, d15, [sp, #144]
    add sp, sp, #160
    ret
    .size alexnet_emu_switch, .-alexnet_emu_switch

    .globl alexnet_emu_fiber_start
    .type alexnet_emu_fiber_start, %function
alexnet_emu_fiber_start:
    mov x0, x19
    blr x20
    brk #0
    .size alexnet_emu_fiber_start, .-alexnet_emu_fiber_start
    .section .note.GNU-stack,"",%progbits
    .text
)");
#define EMU_HAVE_ASM_SWITCH 1
#else
#define EMU_HAVE_ASM_SWITCH 0
extern "C" void alexnet_emu_switch(void**, void*) { std::abort(); }
extern "C" void alexnet_emu_fiber_start() { std::abort(); }
#endif

namespace emu {

FiberImpl fiber_impl() {
  static const FiberImpl impl = [] {
    const char* e = std::getenv("ALEXNET_EMU_FIBERS");
    if (e && std::strcmp(e, "ucontext") == 0) return FiberImpl::UContext;
    if (e && *e && std::strcmp(e, "asm") != 0)
      throw std::invalid_argument(std::string("ALEXNET_EMU_FIBERS must be 'asm' or 'ucontext', got '") + e + "'");
    return EMU_HAVE_ASM_SWITCH ? FiberImpl::Asm : FiberImpl::UContext;
  }();
  return impl;
}

const char* fiber_impl_name() { return fiber_impl() == FiberImpl::Asm ? "asm" : "ucontext"; }

namespace {
// ucontext entry points take int arguments: pass the two pointers as four halves.
void uc_trampoline(unsigned e_lo, unsigned e_hi, unsigned a_lo, unsigned a_hi) {
  auto entry = reinterpret_cast<FiberEntry>((uintptr_t(e_hi) << 32) | e_lo);
  void* arg = reinterpret_cast<void*>((uintptr_t(a_hi) << 32) | a_lo);
  entry(arg);
  std::abort();  // entries never return
}
}  // namespace

void fiber_init(Fiber& f, FiberEntry entry, void* arg) {
  if (fiber_impl() == FiberImpl::UContext) {
    getcontext(&f.uc);
    f.uc.uc_stack.ss_sp = f.stack_lo;
    f.uc.uc_stack.ss_size = size_t(f.stack_hi - f.stack_lo);
    f.uc.uc_link = nullptr;
    uintptr_t e = reinterpret_cast<uintptr_t>(entry), a = reinterpret_cast<uintptr_t>(arg);
    makecontext(&f.uc, reinterpret_cast<void (*)()>(uc_trampoline), 4, unsigned(e), unsigned(e >> 32),
                unsigned(a), unsigned(a >> 32));
    return;
  }
#if defined(__x86_64__)
  // top is 16-byte aligned; after `ret` pops the start address, rsp == top (aligned),
  // so the `call` in alexnet_emu_fiber_start gives the entry a correctly aligned frame.
  uintptr_t top = reinterpret_cast<uintptr_t>(f.stack_hi) & ~uintptr_t(15);
  uint64_t* p = reinterpret_cast<uint64_t*>(top);
  *--p = reinterpret_cast<uint64_t>(&alexnet_emu_fiber_start);  // return address
  *--p = 0;                                                     // rbp
  *--p = 0;                                                     // rbx
  *--p = reinterpret_cast<uint64_t>(arg);                       // r12
  *--p = reinterpret_cast<uint64_t>(entry);                     // r13
  *--p = 0;                                                     // r14
  *--p = 0;                                                     // r15
  *--p = 0x037F00001F80ull;  // mxcsr 0x1F80 (all exceptions masked, round to nearest), x87 cw 0x037F
  f.sp = p;
#elif defined(__aarch64__)
  uintptr_t top = reinterpret_cast<uintptr_t>(f.stack_hi) & ~uintptr_t(15);
  uint64_t* p = reinterpret_cast<uint64_t*>(top - 160);
  std::memset(p, 0, 160);
  p[0] = reinterpret_cast<uint64_t>(arg);                       // x19
  p[1] = reinterpret_cast<uint64_t>(entry);                     // x20
  p[11] = reinterpret_cast<uint64_t>(&alexnet_emu_fiber_start);  // x30
  f.sp = p;
#else
  (void)entry; (void)arg;
#endif
}

void fiber_switch(Fiber& from, Fiber& to) {
  if (fiber_impl() == FiberImpl::UContext) {
    swapcontext(&from.uc, &to.uc);
  } else {
    alexnet_emu_switch(&from.sp, to.sp);
  }
}

StackPool::~StackPool() {
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  for (char* s : stacks_) munmap(s - page, kStackBytes + page);
}

void StackPool::reserve(size_t n) {
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  while (stacks_.size() < n) {
    void* m = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (m == MAP_FAILED) throw std::runtime_error("emu: cannot map a fiber stack (out of memory?)");
    if (mprotect(m, page, PROT_NONE) != 0) throw std::runtime_error("emu: cannot protect a fiber stack guard page");
    stacks_.push_back(static_cast<char*>(m) + page);
  }
}

}  // namespace emu
