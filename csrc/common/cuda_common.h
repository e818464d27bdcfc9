// Included by every kernel source and by the bindings, in both builds:
//   - under nvcc: the real CUDA runtime;
//   - under g++ (ALEXNET_EMU, with csrc/emu/prelude.h force-included): the emulator.
//
// Provides CUDA_CHECK (throws alexnet::CudaError carrying the CUDA error name, its
// message and file:line), LAUNCH (the checked launch helper of both builds) and
// DYNAMIC_SHARED (dynamic shared memory under both compilers).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

namespace alexnet {

// A failed CUDA call or launch. pybind11 turns it into RuntimeError.
struct CudaError : std::runtime_error {
  explicit CudaError(const std::string& m) : std::runtime_error(m) {}
};

[[noreturn]] inline void throw_cuda_error(const char* what, const std::string& detail, const char* file, int line) {
  throw CudaError(std::string(what) + ": " + detail + " (" + file + ":" + std::to_string(line) + ")");
}

inline void check_cuda(cudaError_t e, const char* expr, const char* file, int line) {
  if (e != cudaSuccess)
    throw_cuda_error(cudaGetErrorName(e), std::string(cudaGetErrorString(e)) + " in " + expr, file, line);
}

// ALEXNET_CUDA_SYNC=1 makes every launch synchronous, so an asynchronous kernel
// failure is reported at the launch that caused it (like CUDA_LAUNCH_BLOCKING).
inline bool sync_launches() {
  static const bool on = [] {
    const char* e = std::getenv("ALEXNET_CUDA_SYNC");
    return e && *e && std::string(e) != "0";
  }();
  return on;
}

#if defined(ALEXNET_EMU)
// The kernel's pointer arguments, for emu::check_launch (which devices' memory a launch reads).
template <class P, class A>
inline void collect_pointer(const void** out, int& n, A& a) {
  if constexpr (std::is_pointer_v<P>) out[n++] = static_cast<const void*>(static_cast<P>(a));
}
#endif

template <typename... P, typename... A>
inline void launch_at(const char* file, int line, const char* name, void (*kernel)(P...), dim3 grid, dim3 block,
                      size_t smem, cudaStream_t stream, A&&... args) {
#if defined(ALEXNET_EMU)
  auto body = [&]() { kernel(static_cast<P>(args)...); };
  try {
    const void* ptrs[sizeof...(P) + 1];
    int n = 0;
    (collect_pointer<P>(ptrs, n, args), ...);
    emu::check_launch(name, stream, ptrs, n);
    emu::launch_kernel(reinterpret_cast<const void*>(kernel), name, grid, block, smem, emu::Thunk::of(body));
  } catch (const emu::StreamError& e) {
    throw_cuda_error("cudaErrorInvalidResourceHandle", e.what(), file, line);
  } catch (const emu::AccessError& e) {
    throw_cuda_error("cudaErrorIllegalAddress", e.what(), file, line);
  } catch (const emu::ConfigError& e) {
    throw_cuda_error("cudaErrorInvalidConfiguration", e.what(), file, line);
  } catch (const emu::Error& e) {
    throw_cuda_error("cudaErrorLaunchFailure", e.what(), file, line);
  }
#elif defined(__CUDACC__)
  kernel<<<grid, block, smem, stream>>>(std::forward<A>(args)...);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    throw_cuda_error(cudaGetErrorName(e), std::string(cudaGetErrorString(e)) + " launching " + name, file, line);
  if (sync_launches()) {
    e = cudaStreamSynchronize(stream);
    if (e != cudaSuccess)
      throw_cuda_error(cudaGetErrorName(e), std::string(cudaGetErrorString(e)) + " in " + name, file, line);
  }
#else
  static_assert(sizeof...(P) < 0, "LAUNCH is for .cu files (nvcc or the emu build)");
#endif
}

}  // namespace alexnet

#define CUDA_CHECK(expr) ::alexnet::check_cuda((expr), #expr, __FILE__, __LINE__)

// LAUNCH(kernel, grid, block, dynamic_smem_bytes, stream, args...): kernel<<<...>>>(args...)
// under nvcc, the fiber scheduler under g++; checked in both.
#define LAUNCH(kernel, ...) ::alexnet::launch_at(__FILE__, __LINE__, #kernel, kernel, __VA_ARGS__)

// DYNAMIC_SHARED(T, name): `T* name` pointing at the block's dynamic shared memory.
#if defined(ALEXNET_EMU)
#define DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(emu::dynamic_shared_memory())
#else
#define DYNAMIC_SHARED(T, name)                                 \
  extern __shared__ __align__(16) unsigned char name##_bytes_[]; \
  T* name = reinterpret_cast<T*>(name##_bytes_)
#endif
