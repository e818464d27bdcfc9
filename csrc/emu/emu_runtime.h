// The emulator's own interface: what the prelude's CUDA built-ins call into, and the
// launch entry point. Kernel code never includes this directly; it sees CUDA names.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

struct uint3 {
  unsigned int x, y, z;
};

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return uint3{x, y, z}; }
};

// The running fiber's coordinates: real values, rewritten by the scheduler at every switch.
extern __thread uint3 threadIdx;
extern __thread uint3 blockIdx;
extern __thread uint3 blockDim;
extern __thread uint3 gridDim;

struct CUstream_st;
typedef CUstream_st* cudaStream_t;

namespace emu {

// A kernel failure found by the emulator (barrier divergence, bad warp mask, bad launch).
struct Error : std::runtime_error {
  explicit Error(const std::string& m) : std::runtime_error(m) {}
};
// A launch configuration the GPU would refuse (cudaErrorInvalidConfiguration).
struct ConfigError : Error {
  explicit ConfigError(const std::string& m) : Error(m) {}
};

// A launch into a stream of another device (cudaErrorInvalidResourceHandle).
struct StreamError : Error {
  explicit StreamError(const std::string& m) : Error(m) {}
};
// A kernel given memory of a device it may not access (cudaErrorIllegalAddress).
struct AccessError : Error {
  explicit AccessError(const std::string& m) : Error(m) {}
};

// Virtual devices (ALEXNET_EMU_DEVICES, runtime.cpp): the device whose cudaMalloc holds p, or -1
// for memory the runtime did not allocate (plain host memory, which every device may read).
int pointer_device(const void* p);
// The calling host thread's current device (cudaSetDevice).
int current_device();
// Before a launch: the stream must belong to the current device (else StreamError), and every
// pointer argument that points into a cudaMalloc'd allocation must be memory of the current
// device or of a device it has enabled peer access to (else AccessError, naming the argument and
// both devices). Pointers stored inside memory or structs are not seen.
void check_launch(const char* name, cudaStream_t stream, const void* const* ptrs, int n);

// A type-erased call of the kernel body with its arguments bound.
struct Thunk {
  void (*call)(const void* self);
  const void* self;
  template <class F>
  static Thunk of(const F& f) {
    return Thunk{[](const void* s) { (*static_cast<const F*>(s))(); }, &f};
  }
};

// Runs the whole grid (blocks on several OS threads, one fiber per CUDA thread) and
// returns when it is done. Throws emu::Error on a bad configuration or a kernel failure.
void launch_kernel(const void* kernel_id, const char* name, dim3 grid, dim3 block, size_t dynamic_smem,
                   const Thunk& thunk);

// Barrier kinds for syncthreads(): plain, count, and, or.
enum BarrierKind { kBarPlain = 0, kBarCount = 1, kBarAnd = 2, kBarOr = 3 };
int syncthreads(int kind, int predicate, const char* file, int line);

// Warp collectives over 32 consecutive linear thread ids.
enum WarpOp { kShfl = 0, kShflUp, kShflDown, kShflXor, kBallot, kAny, kAll, kSyncWarp, kWarpCompute, kNumWarpOps };
uint64_t warp_collective(int op, unsigned mask, uint64_t bits, int arg, int width);

// A warp-wide operation on every lane's registers (the warp-level matrix instructions,
// csrc/common/mma_sync.h): all 32 lanes of the warp arrive with a pointer to their own
// record; the last lane in calls fn once with the 32 records (lane order), while every
// other lane waits, so fn may read and write any lane's record. All lanes must pass the
// same fn; `name` is the operation's name in error messages.
using WarpFn = void (*)(void* const* lanes);
void warp_compute(WarpFn fn, void* record, const char* name);

// Errors found inside a kernel (wrong use of a built-in): abandons the block.
[[noreturn]] void kernel_fail(const std::string& message);

// The block's dynamic shared memory (poisoned with 0xFF bytes before each block).
unsigned char* dynamic_shared_memory();

// cudaFuncSetAttribute(..., cudaFuncAttributeMaxDynamicSharedMemorySize, n)
void set_max_dynamic_smem(const void* kernel_id, int bytes);

// Settings, read from the environment at each launch:
//   ALEXNET_EMU_ORDER   forward | reverse | shuffle | shuffle:SEED   (fiber order in a block)
//   ALEXNET_EMU_THREADS number of OS threads that run blocks (default: all cores)
//   ALEXNET_EMU_FIBERS  asm | ucontext                               (read once per process)
std::string settings_summary();

}  // namespace emu
