// Fibers for the CPU execution of CUDA kernels: one fiber per CUDA thread.
//
// A fiber is a stack and a saved stack pointer. Switching saves the callee-saved
// registers (and the SSE/x87 control words) on the current stack, stores the stack
// pointer, loads the other fiber's and pops its registers: about ten nanoseconds.
// The hand-written switch exists for x86-64 and aarch64; everywhere else, or when
// ALEXNET_EMU_FIBERS=ucontext is set, the portable (slower) ucontext switch is used.
//
// Stacks come from a per-OS-thread pool: mmap'ed, kStackBytes each, with a
// PROT_NONE guard page below so an overflow faults instead of corrupting a neighbour.
#pragma once

#include <cstddef>
#include <vector>
#include <ucontext.h>

namespace emu {

constexpr size_t kStackBytes = 128 * 1024;

enum class FiberImpl { Asm, UContext };

// Which implementation this process uses (chosen once, from ALEXNET_EMU_FIBERS).
FiberImpl fiber_impl();
const char* fiber_impl_name();

struct Fiber {
  void* sp = nullptr;      // saved stack pointer (asm switch)
  ucontext_t uc;           // saved context (ucontext switch)
  char* stack_lo = nullptr;
  char* stack_hi = nullptr;
};

using FiberEntry = void (*)(void* arg);

// Prepares `f` so that the next switch into it calls entry(arg) on its own stack.
// entry must never return: it ends by switching away for good.
void fiber_init(Fiber& f, FiberEntry entry, void* arg);

// Saves the running context into `from` and resumes `to`.
void fiber_switch(Fiber& from, Fiber& to);

// A per-OS-thread pool of stacks; stacks are reused by later blocks and launches.
class StackPool {
 public:
  ~StackPool();
  // Makes sure at least n stacks exist; returns them.
  void reserve(size_t n);
  char* lo(size_t i) const { return stacks_[i]; }
  char* hi(size_t i) const { return stacks_[i] + kStackBytes; }

 private:
  std::vector<char*> stacks_;  // usable area [p, p + kStackBytes), guard page below p
};

}  // namespace emu
