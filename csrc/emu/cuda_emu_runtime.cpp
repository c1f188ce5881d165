// The scheduler behind cuda_emu.h: blocks one after another, each block's threads as ucontext
// fibers that meet at barriers; plus the few CUDA runtime calls the launchers make
// (cudaGetLastError, cudaGetErrorString, cudaMemsetAsync). Not linked with libcudart.
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "cuda_emu.h"

namespace fb_emu {

namespace {
constexpr size_t kStackBytes = 256 * 1024;
constexpr int kMaxThreads = 1024;
constexpr size_t kMaxDynamicSmem = 48 * 1024;  // without cudaFuncSetAttribute opt-in
}  // namespace

struct Fiber {
  ucontext_t ctx;
  uint3 tid;
  int linear = 0;
  Wait wait = Wait::kRunnable;
  unsigned warp_mask = 0;
  const char* site_file = nullptr;
  unsigned site_line = 0;
  void* stack = nullptr;
};

struct Block {
  uint3 bidx;
  dim3 bdim, gdim;
  ucontext_t sched;
  std::vector<Fiber> fibers;
  std::vector<uint64_t> slots;  // 32 per warp
  unsigned char* smem = nullptr;
  Body body = nullptr;
  void* closure = nullptr;
  std::string error;  // set by a fiber; ends the launch
};

thread_local Fiber* tl_fiber = nullptr;
thread_local Block* tl_block = nullptr;

namespace {
thread_local cudaError_t tl_last_error = cudaSuccess;
thread_local std::string tl_last_message;
thread_local std::vector<void*> tl_stacks;  // pool: a stack per fiber, reused across launches
thread_local std::vector<unsigned char> tl_smem;
thread_local std::mt19937 tl_rng(12345);
std::mutex g_launch_mutex;
std::map<const void*, uint64_t> g_launches;

void* stack_for(size_t i) {
  while (tl_stacks.size() <= i) {
    const long page = sysconf(_SC_PAGESIZE);
    void* p = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return nullptr;
    mprotect(p, page, PROT_NONE);  // guard page below the stack: an overflow faults
    tl_stacks.push_back(static_cast<char*>(p) + page);
  }
  return tl_stacks[i];
}

void fiber_entry() {
  Block* b = tl_block;
  b->body(b->closure);
  tl_fiber->wait = Wait::kDone;
  // returns to b->sched through uc_link
}

void yield_to_scheduler() { swapcontext(&tl_fiber->ctx, &tl_block->sched); }

cudaError_t fail(cudaError_t err, const std::string& msg) {
  tl_last_error = err;
  tl_last_message = msg;
  std::fprintf(stderr, "fastblocks cuda_emu: %s\n", msg.c_str());
  return err;
}

// Runs one block to completion; false (with b.error set) on a launch error.
bool run_block(Block& b) {
  const int n = int(b.bdim.x * b.bdim.y * b.bdim.z);
  b.fibers.assign(size_t(n), Fiber{});
  b.slots.assign(size_t((n + 31) / 32) * 32, 0);
  for (int i = 0; i < n; ++i) {
    Fiber& f = b.fibers[size_t(i)];
    f.linear = i;
    f.tid = make_uint3(unsigned(i) % b.bdim.x, unsigned(i) / b.bdim.x % b.bdim.y,
                       unsigned(i) / (b.bdim.x * b.bdim.y));
    f.stack = stack_for(size_t(i));
    if (f.stack == nullptr) {
      b.error = "out of memory for fiber stacks";
      return false;
    }
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = &b.sched;
    makecontext(&f.ctx, fiber_entry, 0);
  }
  std::vector<int> order(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) order[size_t(i)] = i;
  const int nwarps = (n + 31) / 32;
  for (;;) {
    std::shuffle(order.begin(), order.end(), tl_rng);
    for (int i : order) {
      Fiber& f = b.fibers[size_t(i)];
      if (f.wait != Wait::kRunnable) continue;
      tl_fiber = &f;
      swapcontext(&b.sched, &f.ctx);
      tl_fiber = nullptr;
      if (!b.error.empty()) return false;
    }
    int alive = 0, at_block = 0;
    for (const Fiber& f : b.fibers) {
      alive += f.wait != Wait::kDone;
      at_block += f.wait == Wait::kBlockBarrier;
    }
    if (alive == 0) return true;
    // Warp collectives first: a warp whose mask lanes have all arrived goes on.
    bool released = false;
    for (int w = 0; w < nwarps; ++w) {
      unsigned waiting = 0, mask = 0, exists = 0, done = 0;
      for (int l = 0; l < 32 && w * 32 + l < n; ++l) {
        const Fiber& f = b.fibers[size_t(w * 32 + l)];
        exists |= 1u << l;
        if (f.wait == Wait::kWarpBarrier) {
          waiting |= 1u << l;
          mask |= f.warp_mask;
        }
        if (f.wait == Wait::kDone) done |= 1u << l;
      }
      if (waiting == 0) continue;
      const unsigned need = mask & exists;
      if (need & done) {
        b.error = "warp collective waits for lanes that have returned (mask " +
                  std::to_string(mask) + ", warp " + std::to_string(w) + ")";
        return false;
      }
      if ((need & ~waiting) == 0) {
        for (int l = 0; l < 32 && w * 32 + l < n; ++l)
          if (waiting >> l & 1u) b.fibers[size_t(w * 32 + l)].wait = Wait::kRunnable;
        released = true;
      }
    }
    if (released) continue;
    if (at_block == alive) {
      const Fiber* first = nullptr;
      for (Fiber& f : b.fibers) {
        if (f.wait != Wait::kBlockBarrier) continue;
        if (first == nullptr) {
          first = &f;
        } else if (f.site_line != first->site_line ||
                   std::strcmp(f.site_file, first->site_file) != 0) {
          b.error = std::string("divergent __syncthreads(): threads wait at ") + first->site_file +
                    ":" + std::to_string(first->site_line) + " and at " + f.site_file + ":" +
                    std::to_string(f.site_line);
          return false;
        }
        f.wait = Wait::kRunnable;
      }
      continue;
    }
    b.error = "deadlock: threads wait at __syncthreads() while others wait in a warp collective";
    return false;
  }
}
}  // namespace

void record_launch(const void* kernel) {
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  ++g_launches[kernel];
}

const uint3& thread_idx() { return tl_fiber->tid; }
const uint3& block_idx() { return tl_block->bidx; }
const dim3& block_dim() { return tl_block->bdim; }
const dim3& grid_dim() { return tl_block->gdim; }
int lane_id() { return tl_fiber->linear % 32; }
unsigned char* dynamic_shared_bytes() { return tl_block->smem; }

void block_barrier(const std::source_location& site) {
  tl_fiber->wait = Wait::kBlockBarrier;
  tl_fiber->site_file = site.file_name();
  tl_fiber->site_line = site.line();
  yield_to_scheduler();
}

void warp_barrier(unsigned mask) {
  if (!(mask >> lane_id() & 1u)) {
    tl_block->error = "warp collective called by a lane outside its mask";
    yield_to_scheduler();
  }
  tl_fiber->wait = Wait::kWarpBarrier;
  tl_fiber->warp_mask = mask;
  yield_to_scheduler();
}

uint64_t* warp_slot(int lane) {
  return &tl_block->slots[size_t(tl_fiber->linear / 32 * 32 + lane)];
}

unsigned live_lanes() {
  const int w0 = tl_fiber->linear / 32 * 32;
  unsigned m = 0;
  for (int l = 0; l < 32 && w0 + l < int(tl_block->fibers.size()); ++l)
    if (tl_block->fibers[size_t(w0 + l)].wait != Wait::kDone) m |= 1u << l;
  return m;
}

cudaError_t run_grid(dim3 grid, dim3 block, size_t smem, Body body, void* closure) {
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (threads == 0 || threads > kMaxThreads || block.x > 1024 || block.y > 1024 || block.z > 64)
    return fail(cudaErrorInvalidConfiguration,
                "block (" + std::to_string(block.x) + ", " + std::to_string(block.y) + ", " +
                    std::to_string(block.z) + ") is outside CUDA's limits");
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 2147483647u || grid.y > 65535 ||
      grid.z > 65535)
    return fail(cudaErrorInvalidConfiguration,
                "grid (" + std::to_string(grid.x) + ", " + std::to_string(grid.y) + ", " +
                    std::to_string(grid.z) + ") is outside CUDA's limits");
  if (smem > kMaxDynamicSmem)
    return fail(cudaErrorInvalidValue, std::to_string(smem) +
                                           " bytes of dynamic shared memory need an opt-in");
  if (tl_block != nullptr) return fail(cudaErrorLaunchFailure, "launch from inside a kernel");
  const uint64_t nblocks = uint64_t(grid.x) * grid.y * grid.z;
  std::vector<uint64_t> order(nblocks);
  for (uint64_t i = 0; i < nblocks; ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), tl_rng);  // no kernel may rely on block order
  tl_smem.assign(std::max<size_t>(smem, 16), 0);
  Block b;
  b.bdim = block;
  b.gdim = grid;
  b.body = body;
  b.closure = closure;
  b.smem = tl_smem.data();
  tl_block = &b;
  bool ok = true;
  for (uint64_t id : order) {
    b.bidx = make_uint3(unsigned(id % grid.x), unsigned(id / grid.x % grid.y),
                        unsigned(id / (uint64_t(grid.x) * grid.y)));
    std::memset(b.smem, 0xff, smem);  // NaN for floats: reads of unwritten shared memory show
    if (!run_block(b)) {
      ok = false;
      break;
    }
  }
  tl_block = nullptr;
  if (!ok) return fail(cudaErrorLaunchFailure, b.error);
  return cudaSuccess;
}

}  // namespace fb_emu

extern "C" {

cudaError_t cudaGetLastError(void) {
  const cudaError_t e = fb_emu::tl_last_error;
  fb_emu::tl_last_error = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError(void) { return fb_emu::tl_last_error; }

const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorLaunchFailure: return "unspecified launch failure (emulation)";
    default: return "cuda_emu error";
  }
}

cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t) {
  std::memset(p, value, bytes);
  return cudaSuccess;
}

// For the Python side: the message of the last launch error, and the schedule's seed.
const char* fb_emu_last_message(void) { return fb_emu::tl_last_message.c_str(); }
void fb_emu_seed(unsigned seed) { fb_emu::tl_rng.seed(seed); }

// Kernels launched so far: up to `cap` (address, count) pairs; returns how many there are.
int fb_emu_launches(const void** addrs, uint64_t* counts, int cap) {
  std::lock_guard<std::mutex> lock(fb_emu::g_launch_mutex);
  int i = 0;
  for (const auto& [addr, count] : fb_emu::g_launches) {
    if (i < cap) {
      addrs[i] = addr;
      counts[i] = count;
    }
    ++i;
  }
  return i;
}

}  // extern "C"
