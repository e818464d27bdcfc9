// The CUDA runtime calls of the emu build, over host memory. ALEXNET_EMU_DEVICES=N (default 1,
// read at every call) presents N virtual devices: each allocation is tagged with the device that
// was current when it was made, the current device is per host thread (as CUDA's), streams and
// events belong to a device, and peer access between devices is a table that
// cudaDeviceEnablePeerAccess fills. A launch checks its pointer arguments against that table
// (check_launch below). Everything is synchronous, so streams and events only need to exist,
// belong to the right device and time.
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <thread>

#include "cuda_runtime.h"

struct CUstream_st {
  int device;
};
struct CUevent_st {
  int device;
  std::chrono::steady_clock::time_point t;
  bool recorded;
};

namespace {
constexpr int kMaxDevices = 16;

thread_local cudaError_t tl_last = cudaSuccess;
thread_local int tl_device = 0;

struct Alloc {
  size_t bytes;
  int device;
};
std::mutex g_mu;
std::map<uintptr_t, Alloc> g_allocs;         // base address -> size and device
bool g_peer[kMaxDevices][kMaxDevices] = {};  // g_peer[a][b]: device a may access device b's memory

cudaError_t set(cudaError_t e) {
  if (e != cudaSuccess) tl_last = e;
  return e;
}

// ALEXNET_EMU_DEVICES: 1..16, default 1; anything else is 0 devices (cudaGetDeviceCount fails).
int device_count() {
  const char* e = std::getenv("ALEXNET_EMU_DEVICES");
  if (!e || !*e) return 1;
  char* end = nullptr;
  long n = std::strtol(e, &end, 10);
  return (*end == 0 && n >= 1 && n <= kMaxDevices) ? int(n) : 0;
}
bool valid_device(int d) { return d >= 0 && d < device_count(); }

// ALEXNET_EMU_PEER=0 makes cudaDeviceCanAccessPeer say no for every pair (a machine without
// peer access), so the fallback path runs on emu too.
bool peer_possible() {
  const char* e = std::getenv("ALEXNET_EMU_PEER");
  return !(e && std::string(e) == "0");
}

// The allocation holding address p (caller holds g_mu), or end().
std::map<uintptr_t, Alloc>::const_iterator find_alloc(const void* p) {
  uintptr_t a = reinterpret_cast<uintptr_t>(p);
  auto it = g_allocs.upper_bound(a);
  if (it == g_allocs.begin()) return g_allocs.end();
  --it;
  return a < it->first + (it->second.bytes ? it->second.bytes : 1) ? it : g_allocs.end();
}

int stream_device(cudaStream_t s) { return s ? s->device : tl_device; }
}  // namespace

namespace emu {

int pointer_device(const void* p) {
  std::lock_guard<std::mutex> g(g_mu);
  auto it = find_alloc(p);
  return it == g_allocs.end() ? -1 : it->second.device;
}

int current_device() { return tl_device; }

void check_launch(const char* name, cudaStream_t stream, const void* const* ptrs, int n) {
  const int cur = tl_device;
  if (stream && stream->device != cur)
    throw StreamError(std::string("kernel ") + name + " launched on device " + std::to_string(cur) +
                      " into a stream of device " + std::to_string(stream->device));
  std::lock_guard<std::mutex> g(g_mu);
  for (int i = 0; i < n; ++i) {
    auto it = find_alloc(ptrs[i]);
    if (it == g_allocs.end()) continue;
    const int d = it->second.device;
    if (d == cur || (d < kMaxDevices && g_peer[cur][d])) continue;
    throw AccessError(std::string("kernel ") + name + " on device " + std::to_string(cur) + ": pointer argument " +
                      std::to_string(i + 1) + " points into memory of device " + std::to_string(d) +
                      ", and peer access from device " + std::to_string(cur) + " to device " + std::to_string(d) +
                      " is not enabled (cudaDeviceEnablePeerAccess)");
  }
}

}  // namespace emu

const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInitializationError: return "cudaErrorInitializationError";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
    case cudaErrorPeerAccessUnsupported: return "cudaErrorPeerAccessUnsupported";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorPeerAccessAlreadyEnabled: return "cudaErrorPeerAccessAlreadyEnabled";
    case cudaErrorPeerAccessNotEnabled: return "cudaErrorPeerAccessNotEnabled";
    default: return "cudaErrorUnknown";
  }
}

const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInitializationError: return "initialization error";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorNotSupported: return "operation not supported";
    case cudaErrorPeerAccessUnsupported: return "peer access is not supported between these two devices";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorPeerAccessAlreadyEnabled: return "peer access is already enabled";
    case cudaErrorPeerAccessNotEnabled: return "peer access has not been enabled";
    default: return "unknown error";
  }
}

cudaError_t cudaGetLastError() {
  cudaError_t e = tl_last;
  tl_last = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return tl_last; }

cudaError_t cudaGetDeviceCount(int* n) {
  if (!n) return set(cudaErrorInvalidValue);
  *n = device_count();
  return *n ? cudaSuccess : set(cudaErrorInvalidValue);  // a bad ALEXNET_EMU_DEVICES
}
cudaError_t cudaGetDevice(int* d) {
  if (!d) return set(cudaErrorInvalidValue);
  *d = tl_device;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int d) {
  if (!valid_device(d)) return set(cudaErrorInvalidDevice);
  tl_device = d;
  return cudaSuccess;
}

cudaError_t cudaDeviceCanAccessPeer(int* can, int device, int peer) {
  if (!can) return set(cudaErrorInvalidValue);
  if (!valid_device(device) || !valid_device(peer)) return set(cudaErrorInvalidDevice);
  *can = device != peer && peer_possible();  // CUDA answers 0 for a device and itself
  return cudaSuccess;
}
cudaError_t cudaDeviceEnablePeerAccess(int peer, unsigned int flags) {
  if (flags != 0) return set(cudaErrorInvalidValue);
  if (!valid_device(peer) || peer == tl_device) return set(cudaErrorInvalidDevice);
  if (!peer_possible()) return set(cudaErrorPeerAccessUnsupported);
  std::lock_guard<std::mutex> g(g_mu);
  if (g_peer[tl_device][peer]) return set(cudaErrorPeerAccessAlreadyEnabled);
  g_peer[tl_device][peer] = true;
  return cudaSuccess;
}
cudaError_t cudaDeviceDisablePeerAccess(int peer) {
  if (!valid_device(peer) || peer == tl_device) return set(cudaErrorInvalidDevice);
  std::lock_guard<std::mutex> g(g_mu);
  if (!g_peer[tl_device][peer]) return set(cudaErrorPeerAccessNotEnabled);
  g_peer[tl_device][peer] = false;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d) {
  if (!p) return set(cudaErrorInvalidValue);
  if (!valid_device(d)) return set(cudaErrorInvalidDevice);
  std::memset(p, 0, sizeof *p);
  std::strncpy(p->name, "alexnet-cuda emu (CPU)", sizeof p->name - 1);
  p->totalGlobalMem = size_t(1) << 34;
  p->sharedMemPerBlock = 48 * 1024;
  p->sharedMemPerBlockOptin = 227 * 1024;
  p->regsPerBlock = 65536;
  p->warpSize = 32;
  p->maxThreadsPerBlock = 1024;
  p->maxThreadsDim[0] = 1024; p->maxThreadsDim[1] = 1024; p->maxThreadsDim[2] = 64;
  p->maxGridSize[0] = 0x7fffffff; p->maxGridSize[1] = 65535; p->maxGridSize[2] = 65535;
  unsigned hw = std::thread::hardware_concurrency();
  p->multiProcessorCount = hw ? int(hw) : 1;
  p->major = 9;
  p->minor = 0;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int d) {
  if (!v) return set(cudaErrorInvalidValue);
  if (!valid_device(d)) return set(cudaErrorInvalidDevice);
  cudaDeviceProp p;
  cudaGetDeviceProperties(&p, d);
  switch (a) {
    case cudaDevAttrMaxThreadsPerBlock: *v = p.maxThreadsPerBlock; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *v = int(p.sharedMemPerBlock); break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = int(p.sharedMemPerBlockOptin); break;
    case cudaDevAttrWarpSize: *v = 32; break;
    case cudaDevAttrMultiProcessorCount: *v = p.multiProcessorCount; break;
    case cudaDevAttrComputeCapabilityMajor: *v = p.major; break;
    case cudaDevAttrComputeCapabilityMinor: *v = p.minor; break;
    default: *v = 0; break;
  }
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
cudaError_t cudaMemGetInfo(size_t* f, size_t* t) {
  if (!f || !t) return set(cudaErrorInvalidValue);
  *t = size_t(1) << 34;
  *f = *t;
  return cudaSuccess;
}

cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* a, const void* p) {
  if (!a) return set(cudaErrorInvalidValue);
  const int d = emu::pointer_device(p);
  a->type = d < 0 ? cudaMemoryTypeUnregistered : cudaMemoryTypeDevice;  // not cudaMalloc'd: plain host memory
  a->device = d < 0 ? -2 : d;
  a->devicePointer = d < 0 ? nullptr : const_cast<void*>(p);
  a->hostPointer = d < 0 ? const_cast<void*>(p) : nullptr;
  return cudaSuccess;
}

cudaError_t cudaMalloc(void** p, size_t bytes) {
  if (!p) return set(cudaErrorInvalidValue);
  void* m = nullptr;
  if (posix_memalign(&m, 256, bytes ? bytes : 1) != 0) return set(cudaErrorMemoryAllocation);
  std::lock_guard<std::mutex> g(g_mu);
  g_allocs[reinterpret_cast<uintptr_t>(m)] = Alloc{bytes, tl_device};
  *p = m;
  return cudaSuccess;
}

cudaError_t cudaFree(void* p) {
  if (!p) return cudaSuccess;
  {
    std::lock_guard<std::mutex> g(g_mu);
    if (!g_allocs.erase(reinterpret_cast<uintptr_t>(p))) return set(cudaErrorInvalidDevicePointer);
  }
  std::free(p);
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  if (int(kind) < 0 || int(kind) > 4) return set(cudaErrorInvalidMemcpyDirection);
  if (bytes && (!dst || !src)) return set(cudaErrorInvalidValue);
  if (bytes) std::memmove(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t) {
  return cudaMemcpy(dst, src, bytes, kind);
}
cudaError_t cudaMemset(void* p, int value, size_t bytes) {
  if (bytes && !p) return set(cudaErrorInvalidValue);
  if (bytes) std::memset(p, value, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t) { return cudaMemset(p, value, bytes); }

// [p, p + bytes) inside one allocation of `device`.
static bool on_device(const void* p, size_t bytes, int device) {
  std::lock_guard<std::mutex> g(g_mu);
  auto it = find_alloc(p);
  return it != g_allocs.end() && it->second.device == device &&
         reinterpret_cast<uintptr_t>(p) + bytes <= it->first + it->second.bytes;
}

// Needs no peer access (CUDA stages the copy when there is none); both ranges must be memory of
// the devices named, and the stream (when given) one of the source or destination device.
cudaError_t cudaMemcpyPeerAsync(void* dst, int dst_device, const void* src, int src_device, size_t bytes,
                                cudaStream_t s) {
  if (!valid_device(dst_device) || !valid_device(src_device)) return set(cudaErrorInvalidDevice);
  if (!bytes) return cudaSuccess;
  if (!on_device(dst, bytes, dst_device) || !on_device(src, bytes, src_device)) return set(cudaErrorInvalidValue);
  if (s && s->device != dst_device && s->device != src_device) return set(cudaErrorInvalidResourceHandle);
  std::memmove(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpyPeer(void* dst, int dst_device, const void* src, int src_device, size_t bytes) {
  return cudaMemcpyPeerAsync(dst, dst_device, src, src_device, bytes, nullptr);
}

cudaError_t cudaStreamCreate(cudaStream_t* s) {
  if (!s) return set(cudaErrorInvalidValue);
  *s = new CUstream_st{tl_device};
  return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned int flags) {
  if (flags > 1) return set(cudaErrorInvalidValue);
  return cudaStreamCreate(s);
}
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  delete s;
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
// Any device's event may be waited for by any device's stream (the point of cross-device waits).
cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t e, unsigned int flags) {
  if (!e || flags != 0) return set(e ? cudaErrorInvalidValue : cudaErrorInvalidResourceHandle);
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t* e) {
  if (!e) return set(cudaErrorInvalidValue);
  *e = new CUevent_st{tl_device, {}, false};
  return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned int flags) {
  if (flags & ~3u) return set(cudaErrorInvalidValue);
  return cudaEventCreate(e);
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete e;
  return cudaSuccess;
}
// As CUDA: the event and the stream must belong to the same device (the null stream is the
// current device's).
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
  if (!e) return set(cudaErrorInvalidResourceHandle);
  if (stream_device(s) != e->device) return set(cudaErrorInvalidResourceHandle);
  e->t = std::chrono::steady_clock::now();
  e->recorded = true;
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) { return e ? cudaSuccess : set(cudaErrorInvalidResourceHandle); }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
  if (!ms || !a || !b || !a->recorded || !b->recorded) return set(cudaErrorInvalidValue);
  *ms = std::chrono::duration<float, std::milli>(b->t - a->t).count();
  return cudaSuccess;
}
