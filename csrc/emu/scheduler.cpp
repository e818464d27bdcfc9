// The block scheduler of the emu build: one fiber per CUDA thread, switched only at
// barriers and warp collectives; blocks spread over a pool of OS threads.
//
// A block runs in passes: each pass resumes every runnable fiber, in the chosen order
// (forward, reverse, or a seeded shuffle per block), until it blocks or returns. A
// __syncthreads completes when every thread that has not returned waits at it; a warp
// collective completes when every lane of its mask has arrived, and the last lane to
// arrive computes every lane's result. When nothing can run and something waits, the
// block is stopped and the error names the threads and where they wait.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <sstream>
#include <thread>
#include <unordered_map>
#include <vector>

#include "emu_runtime.h"
#include "fiber.h"

__thread uint3 threadIdx;
__thread uint3 blockIdx;
__thread uint3 blockDim;
__thread uint3 gridDim;

// Markers around the kernels' static __shared__ variables (see shared_begin.cpp).
extern __thread char alexnet_emu_shared_begin;
extern __thread char alexnet_emu_shared_end;

namespace emu {
namespace {

enum Status : uint8_t { kRunnable, kAtBarrier, kAtWarp, kExited };

const char* const kWarpOpNames[kNumWarpOps] = {"__shfl_sync", "__shfl_up_sync", "__shfl_down_sync",
                                               "__shfl_xor_sync", "__ballot_sync", "__any_sync",
                                               "__all_sync", "__syncwarp", "warp matrix operation"};

struct ThreadRec {
  Fiber fiber;
  uint3 tid;
  Status status;
  // barrier
  int bar_kind, bar_pred, bar_result;
  const char* bar_file;
  int bar_line;
  // warp collective
  int op;
  unsigned mask;
  uint64_t val;
  int arg, width;
  uint64_t result;
  WarpFn fn;         // kWarpCompute: the operation
  const char* what;  // kWarpCompute: its name
};

struct Block {
  const Thunk* thunk;
  int n = 0, live = 0, at_barrier = 0;
  std::vector<ThreadRec> th;
  std::vector<int> order;
  Fiber sched;
  int cur = -1;
  std::string error;
};

__thread Block* tl_block = nullptr;

// Per-OS-thread resources: fiber stacks and the dynamic shared memory buffer.
struct WorkerState {
  StackPool stacks;
  std::unique_ptr<unsigned char[]> dyn;
  size_t dyn_size = 0;
  Block block;
};
thread_local WorkerState* tl_worker = nullptr;

WorkerState& worker_state() {
  if (!tl_worker) tl_worker = new WorkerState();  // lives as long as its OS thread (pool threads never exit)
  return *tl_worker;
}

// "0-31,64,70-71"
std::string ranges(const std::vector<int>& ids) {
  std::ostringstream s;
  for (size_t i = 0; i < ids.size();) {
    size_t j = i;
    while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) ++j;
    if (i) s << ",";
    s << ids[i];
    if (j > i) s << "-" << ids[j];
    i = j + 1;
  }
  return s.str();
}

// Barrier sites are recorded as line * 1000 + column.
std::string site_str(int site) { return std::to_string(site / 1000) + ":" + std::to_string(site % 1000); }

std::string hex(unsigned m) {
  char b[16];
  std::snprintf(b, sizeof b, "0x%08x", m);
  return b;
}

void fiber_main(void* arg) {
  Block* b = tl_block;
  const int i = int(reinterpret_cast<intptr_t>(arg));
  b->thunk->call(b->thunk->self);
  b->th[i].status = kExited;
  b->live--;
  fiber_switch(b->th[i].fiber, b->sched);  // never resumed
  std::abort();
}

// Back to the scheduler; returns when this fiber is resumed.
inline void yield_to_scheduler() {
  Block* b = tl_block;
  fiber_switch(b->th[b->cur].fiber, b->sched);
}

std::string where(const Block& b) {
  std::ostringstream s;
  s << "block (" << blockIdx.x << "," << blockIdx.y << "," << blockIdx.z << ")";
  (void)b;
  return s.str();
}

// Nothing can run and something waits: say who waits where.
std::string deadlock_report(const Block& b) {
  std::ostringstream s;
  s << "barrier divergence in " << where(b) << ": no thread can proceed.";
  std::vector<std::pair<std::string, std::vector<int>>> groups;
  auto add = [&](const std::string& key, int t) {
    for (auto& g : groups)
      if (g.first == key) { g.second.push_back(t); return; }
    groups.push_back({key, {t}});
  };
  for (int t = 0; t < b.n; ++t) {
    const ThreadRec& r = b.th[t];
    if (r.status == kAtBarrier) {
      add(std::string("wait at __syncthreads (") + r.bar_file + ":" + site_str(r.bar_line) + ")", t);
    } else if (r.status == kAtWarp) {
      add(std::string("wait in ") + (r.what ? r.what : kWarpOpNames[r.op]) + " with mask " + hex(r.mask), t);
    } else if (r.status == kExited) {
      add("have returned", t);
    }
  }
  for (auto& g : groups) s << " Threads " << ranges(g.second) << " " << g.first << ".";
  return s.str();
}

void release_barrier(Block& b) {
  // Every waiter must be at the same __syncthreads, with the same kind.
  const ThreadRec* first = nullptr;
  bool same = true;
  int count = 0, all = 1, any = 0;
  for (int t = 0; t < b.n; ++t) {
    const ThreadRec& r = b.th[t];
    if (r.status != kAtBarrier) continue;
    if (!first) first = &r;
    else if (r.bar_line != first->bar_line || std::strcmp(r.bar_file, first->bar_file) != 0 || r.bar_kind != first->bar_kind)
      same = false;
    count += r.bar_pred != 0;
    all &= r.bar_pred != 0;
    any |= r.bar_pred != 0;
  }
  if (!same) {
    std::ostringstream s;
    s << "barrier divergence in " << where(b) << ": threads wait at different __syncthreads.";
    std::vector<std::pair<std::string, std::vector<int>>> groups;
    for (int t = 0; t < b.n; ++t) {
      const ThreadRec& r = b.th[t];
      if (r.status != kAtBarrier) continue;
      std::string key = std::string(r.bar_file) + ":" + site_str(r.bar_line);
      bool found = false;
      for (auto& g : groups)
        if (g.first == key) { g.second.push_back(t); found = true; }
      if (!found) groups.push_back({key, {t}});
    }
    for (auto& g : groups) s << " Threads " << ranges(g.second) << " at " << g.first << ".";
    throw Error(s.str());
  }
  const int result = first->bar_kind == kBarCount ? count : first->bar_kind == kBarAnd ? all : any;
  for (int t = 0; t < b.n; ++t) {
    ThreadRec& r = b.th[t];
    if (r.status != kAtBarrier) continue;
    r.bar_result = result;
    r.status = kRunnable;
  }
  b.at_barrier = 0;
}

uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

enum class Order { Forward, Reverse, Shuffle };
struct Settings {
  Order order = Order::Forward;
  uint64_t seed = 0;
  int threads = 1;
};

Settings read_settings() {
  Settings s;
  const char* o = std::getenv("ALEXNET_EMU_ORDER");
  if (o && *o) {
    if (!std::strcmp(o, "forward")) s.order = Order::Forward;
    else if (!std::strcmp(o, "reverse")) s.order = Order::Reverse;
    else if (!std::strncmp(o, "shuffle", 7) && (o[7] == 0 || o[7] == ':')) {
      s.order = Order::Shuffle;
      s.seed = o[7] ? std::strtoull(o + 8, nullptr, 10) : 0;
    } else {
      throw Error(std::string("ALEXNET_EMU_ORDER must be forward, reverse, shuffle or shuffle:SEED, got '") + o + "'");
    }
  }
  const char* t = std::getenv("ALEXNET_EMU_THREADS");
  int hw = int(std::thread::hardware_concurrency());
  s.threads = hw > 0 ? hw : 1;
  if (t && *t) {
    int v = std::atoi(t);
    if (v < 1 || v > 1024) throw Error(std::string("ALEXNET_EMU_THREADS must be 1..1024, got '") + t + "'");
    s.threads = v;
  }
  return s;
}

std::mutex g_attr_mu;
std::unordered_map<const void*, int> g_max_dyn_smem;

// Poisons the running OS thread's copy of every static __shared__ variable.
void poison_static_shared() {
  char* lo = &alexnet_emu_shared_begin;
  char* hi = &alexnet_emu_shared_end;
  // The span between the markers is not one C++ object: hide the pointers' provenance from
  // the compiler, or _FORTIFY_SOURCE takes the one-byte marker as the memset's bound.
  asm volatile("" : "+r"(lo), "+r"(hi));
  if (hi > lo && size_t(hi - lo) < (size_t(64) << 20)) std::memset(lo, 0xFF, size_t(hi - lo));
}

void run_block(const Thunk& thunk, uint3 bid, uint3 bdim, uint3 gdim, size_t smem, const Settings& st) {
  WorkerState& ws = worker_state();
  Block& b = ws.block;
  const int n = int(bdim.x * bdim.y * bdim.z);
  b.thunk = &thunk;
  b.n = n;
  b.live = n;
  b.at_barrier = 0;
  b.error.clear();
  b.th.resize(size_t(n));
  ws.stacks.reserve(size_t(n));

  blockIdx = bid;
  blockDim = bdim;
  gridDim = gdim;
  poison_static_shared();
  if (smem) {
    if (ws.dyn_size < smem) {
      ws.dyn.reset(new unsigned char[smem + 64]);
      ws.dyn_size = smem;
    }
    std::memset(ws.dyn.get(), 0xFF, smem);
  }

  b.order.resize(size_t(n));
  for (int i = 0; i < n; ++i) b.order[size_t(i)] = st.order == Order::Reverse ? n - 1 - i : i;
  if (st.order == Order::Shuffle) {
    uint64_t x = st.seed * 0x100000001B3ull + (uint64_t(bid.z) * gdim.y + bid.y) * gdim.x + bid.x;
    for (int i = n - 1; i > 0; --i) std::swap(b.order[size_t(i)], b.order[splitmix64(x) % uint64_t(i + 1)]);
  }

  for (int i = 0; i < n; ++i) {
    ThreadRec& r = b.th[size_t(i)];
    r.fiber.stack_lo = ws.stacks.lo(size_t(i));
    r.fiber.stack_hi = ws.stacks.hi(size_t(i));
    r.tid = uint3{unsigned(i) % bdim.x, (unsigned(i) / bdim.x) % bdim.y, unsigned(i) / (bdim.x * bdim.y)};
    r.status = kRunnable;
    fiber_init(r.fiber, fiber_main, reinterpret_cast<void*>(intptr_t(i)));
  }

  tl_block = &b;
  struct Reset {
    ~Reset() { tl_block = nullptr; }
  } reset;
  for (;;) {
    bool any_runnable = true;
    while (any_runnable) {
      any_runnable = false;
      for (int i : b.order) {
        ThreadRec& r = b.th[size_t(i)];
        if (r.status != kRunnable) continue;
        b.cur = i;
        threadIdx = r.tid;
        fiber_switch(b.sched, r.fiber);
        if (!b.error.empty()) throw Error(b.error);
      }
      for (int i = 0; i < n && !any_runnable; ++i) any_runnable = b.th[size_t(i)].status == kRunnable;
    }
    if (b.live == 0) return;
    if (b.at_barrier == b.live) {
      release_barrier(b);
      continue;
    }
    throw Error(deadlock_report(b));
  }
}

// A pool of OS threads that run blocks; the launching thread works too.
class Pool {
 public:
  template <class F>
  void run(int nthreads, F&& work) {
    std::unique_lock<std::mutex> lk(mu_);
    while (int(workers_.size()) < nthreads - 1) {
      workers_.emplace_back([this, id = int(workers_.size())] { loop(id); });
    }
    job_ = std::function<void()>(work);
    wanted_ = nthreads - 1;
    pending_ = wanted_;
    ++gen_;
    cv_.notify_all();
    lk.unlock();
    work();
    lk.lock();
    done_.wait(lk, [&] { return pending_ == 0; });
    job_ = nullptr;
  }

 private:
  void loop(int id) {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      cv_.wait(lk, [&] { return gen_ != seen; });
      seen = gen_;
      if (id >= wanted_) continue;
      auto job = job_;
      lk.unlock();
      job();
      lk.lock();
      if (--pending_ == 0) done_.notify_all();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_, done_;
  std::vector<std::thread> workers_;  // detached at exit: they only ever wait
  std::function<void()> job_;
  uint64_t gen_ = 0;
  int wanted_ = 0, pending_ = 0;
};

Pool& pool() {
  static Pool* p = new Pool();  // never destroyed: its threads sleep until the process ends
  return *p;
}
std::mutex g_launch_mu;  // one grid at a time (launches from several Python threads queue up)

}  // namespace

void kernel_fail(const std::string& message) {
  Block* b = tl_block;
  if (!b) throw Error(message);
  std::ostringstream s;
  s << message << " (thread " << b->cur << " = (" << threadIdx.x << "," << threadIdx.y << "," << threadIdx.z
    << ") of " << where(*b) << ")";
  b->error = s.str();
  yield_to_scheduler();  // the scheduler sees the error and abandons the block
  std::abort();
}

int syncthreads(int kind, int predicate, const char* file, int line) {
  Block* b = tl_block;
  if (!b) throw Error("__syncthreads called outside a kernel");
  ThreadRec& r = b->th[size_t(b->cur)];
  r.status = kAtBarrier;
  r.bar_kind = kind;
  r.bar_pred = predicate;
  r.bar_file = file;
  r.bar_line = line;
  b->at_barrier++;
  yield_to_scheduler();
  return r.bar_result;
}

namespace {
uint64_t collective(int op, unsigned mask, uint64_t bits, int arg, int width, WarpFn fn, const char* what) {
  Block* b = tl_block;
  if (!b) throw Error("warp collective called outside a kernel");
  const int me = b->cur, lane = me & 31, base = me - lane;
  const char* name = what ? what : kWarpOpNames[op];
  if (!((mask >> lane) & 1u)) kernel_fail(std::string(name) + ": the calling lane " + std::to_string(lane) +
                                          " is not in its mask " + hex(mask));
  if (width < 1 || width > 32 || (width & (width - 1)))
    kernel_fail(std::string(name) + ": width must be a power of two from 1 to 32, got " + std::to_string(width));
  for (int l = 0; l < 32; ++l) {
    if (!((mask >> l) & 1u)) continue;
    if (base + l >= b->n)
      kernel_fail(std::string(name) + ": mask " + hex(mask) + " names lane " + std::to_string(l) +
                  ", which does not exist (the block has " + std::to_string(b->n) + " threads)");
    if (b->th[size_t(base + l)].status == kExited)
      kernel_fail(std::string(name) + ": mask " + hex(mask) + " names lane " + std::to_string(l) +
                  ", which has returned");
  }
  ThreadRec& me_r = b->th[size_t(me)];
  me_r.status = kAtWarp;
  me_r.op = op;
  me_r.mask = mask;
  me_r.val = bits;
  me_r.arg = arg;
  me_r.width = width;
  me_r.fn = fn;
  me_r.what = what;

  bool complete = true;
  for (int l = 0; l < 32; ++l) {
    if (!((mask >> l) & 1u)) continue;
    const ThreadRec& o = b->th[size_t(base + l)];
    if (o.status != kAtWarp) { complete = false; continue; }
    if (o.op != op || o.mask != mask || o.fn != fn)
      kernel_fail(std::string(name) + " with mask " + hex(mask) + " meets lane " + std::to_string(l) +
                  " waiting in " + (o.what ? o.what : kWarpOpNames[o.op]) + " with mask " + hex(o.mask));
  }
  if (!complete) {
    yield_to_scheduler();
    return me_r.result;
  }
  if (op == kWarpCompute) {  // every lane's record, in lane order; the others wait meanwhile
    void* records[32];
    for (int l = 0; l < 32; ++l) records[l] = reinterpret_cast<void*>(uintptr_t(b->th[size_t(base + l)].val));
    fn(records);
  }
  // Last lane in: compute every lane's result, then let them all go.
  uint64_t votes = 0;
  for (int l = 0; l < 32; ++l)
    if ((mask >> l) & 1u && b->th[size_t(base + l)].val) votes |= 1ull << l;
  for (int l = 0; l < 32; ++l) {
    if (!((mask >> l) & 1u)) continue;
    ThreadRec& o = b->th[size_t(base + l)];
    const int w = o.width, lo = l & ~(w - 1);
    int src = l;
    switch (op) {
      case kShfl: src = lo + (o.arg & (w - 1)); break;
      case kShflUp: src = (l - lo) >= o.arg ? l - o.arg : l; break;
      case kShflDown: src = (l - lo) + o.arg < w ? l + o.arg : l; break;
      case kShflXor: src = l ^ o.arg; if (src >= lo + w || src < 0) src = l; break;
      default: break;
    }
    if (op <= kShflXor) {
      if (!((mask >> src) & 1u))
        kernel_fail(std::string(name) + ": lane " + std::to_string(l) + " reads lane " + std::to_string(src) +
                    ", which is not in the mask " + hex(mask));
      o.result = b->th[size_t(base + src)].val;
    } else if (op == kBallot) {
      o.result = votes;
    } else if (op == kAny) {
      o.result = votes != 0;
    } else if (op == kAll) {
      o.result = votes == mask;
    } else {
      o.result = 0;
    }
    o.status = kRunnable;
  }
  return me_r.result;
}
}  // namespace

uint64_t warp_collective(int op, unsigned mask, uint64_t bits, int arg, int width) {
  if (op == kWarpCompute) kernel_fail("warp_collective: use warp_compute for a warp matrix operation");
  return collective(op, mask, bits, arg, width, nullptr, nullptr);
}

void warp_compute(WarpFn fn, void* record, const char* name) {
  collective(kWarpCompute, 0xffffffffu, uint64_t(reinterpret_cast<uintptr_t>(record)), 0, 32, fn, name);
}

unsigned char* dynamic_shared_memory() {
  if (!tl_block) throw Error("dynamic shared memory used outside a kernel");
  return worker_state().dyn.get();
}

void set_max_dynamic_smem(const void* kernel_id, int bytes) {
  std::lock_guard<std::mutex> g(g_attr_mu);
  g_max_dyn_smem[kernel_id] = bytes;
}

std::string settings_summary() {
  Settings s = read_settings();
  std::ostringstream o;
  o << "order=" << (s.order == Order::Forward ? "forward" : s.order == Order::Reverse ? "reverse" : "shuffle");
  if (s.order == Order::Shuffle) o << ":" << s.seed;
  o << " threads=" << s.threads << " fibers=" << fiber_impl_name();
  return o.str();
}

void launch_kernel(const void* kernel_id, const char* name, dim3 grid, dim3 block, size_t smem, const Thunk& thunk) {
  const Settings st = read_settings();
  auto bad = [&](const std::string& why) {
    throw ConfigError(std::string("invalid configuration for kernel ") + name + ": " + why);
  };
  const uint64_t nthr = uint64_t(block.x) * block.y * block.z;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) bad("a grid dimension is 0");
  if (block.x == 0 || block.y == 0 || block.z == 0) bad("a block dimension is 0");
  if (nthr > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64)
    bad("block (" + std::to_string(block.x) + "," + std::to_string(block.y) + "," + std::to_string(block.z) +
        ") exceeds 1024 threads or (1024,1024,64)");
  if (grid.y > 65535 || grid.z > 65535 || grid.x > 0x7fffffffu) bad("grid exceeds (2^31-1, 65535, 65535)");
  size_t limit = 48 * 1024;
  {
    std::lock_guard<std::mutex> g(g_attr_mu);
    auto it = g_max_dyn_smem.find(kernel_id);
    if (it != g_max_dyn_smem.end()) limit = size_t(it->second);
  }
  if (smem > limit)
    bad(std::to_string(smem) + " bytes of dynamic shared memory, more than the " + std::to_string(limit) +
        " allowed (raise it with cudaFuncSetAttribute)");

  const uint64_t nblocks = uint64_t(grid.x) * grid.y * grid.z;
  const uint3 gdim{grid.x, grid.y, grid.z}, bdim{block.x, block.y, block.z};
  std::lock_guard<std::mutex> serial(g_launch_mu);
  std::atomic<uint64_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex err_mu;
  std::string first_error;
  auto work = [&] {
    for (;;) {
      if (failed.load(std::memory_order_relaxed)) return;
      const uint64_t i = next.fetch_add(1);
      if (i >= nblocks) return;
      const uint3 bid{unsigned(i % grid.x), unsigned((i / grid.x) % grid.y), unsigned(i / (uint64_t(grid.x) * grid.y))};
      try {
        run_block(thunk, bid, bdim, gdim, smem, st);
      } catch (const std::exception& e) {
        std::lock_guard<std::mutex> g(err_mu);
        if (!failed.exchange(true)) first_error = std::string("kernel ") + name + ": " + e.what();
        return;
      }
    }
  };
  const int nt = int(std::min<uint64_t>(uint64_t(st.threads), nblocks));
  if (nt <= 1) work();
  else pool().run(nt, work);
  if (failed) throw Error(first_error);
}

}  // namespace emu
