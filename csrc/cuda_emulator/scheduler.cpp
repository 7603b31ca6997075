// Runs a launch: blocks one after another, the threads of a block as cooperative fibers on the
// calling OS thread. A fiber runs until it reaches a barrier or warp collective (or exits); when
// no fiber can run, the scheduler completes the collectives whose participants have all arrived,
// or, when none can complete, reports the fault. One launch at a time in the process.
#include <algorithm>
#include <cstdarg>
#include <cstddef>
#include <cstdio>
#include <iterator>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "cuda_emulator/context.h"
#include "cuda_emulator/control.h"
#include "cuda_emulator/cuda_emulator.h"
#include "cuda_emulator/internal.h"

uint3 threadIdx;
uint3 blockIdx;
dim3 blockDim;
dim3 gridDim;

namespace cuda_emulator {
namespace {

using detail::Context;
using detail::Stack;

#if defined(CUDA_EMULATOR_ASAN)
constexpr std::size_t kStackBytes = 512 * 1024;
#else
constexpr std::size_t kStackBytes = 128 * 1024;
#endif
constexpr int kMaxThreadsPerBlock = 1024;
constexpr unsigned int kMaxGridX = 2147483647u;
constexpr unsigned int kMaxGridYZ = 65535u;

enum class State { kReady, kBarrier, kWarp, kExited, kFaulted };

struct Thread {
  Context context;
  uint3 index{};
  int linear = 0;
  State state = State::kReady;
  // At a barrier.
  BarrierKind barrier_kind = BarrierKind::kPlain;
  int predicate = 0;
  const char* file = nullptr;
  int line = 0;
  // At a warp collective.
  WarpOp op = WarpOp::kSync;
  unsigned int mask = 0;
  std::uint64_t value = 0;
  int argument = 0;
  int width = 32;
  std::uint64_t result = 0;
};

struct Emulator {
  std::mutex launch_mutex;
  std::mutex settings_mutex;
  Schedule schedule = Schedule::kForward;
  std::mt19937_64 random{0};

  // The launch in progress.
  const LaunchConfig* config = nullptr;
  void (*invoke)(const void*) = nullptr;
  const void* closure = nullptr;
  std::vector<Thread> threads;
  std::vector<std::unique_ptr<Stack>> stacks;
  std::vector<int> ready;  // run back to front
  Thread* current = nullptr;
  Context scheduler;
  int live = 0;
  std::string fault;
  std::vector<unsigned char> shared;
  unsigned char* shared_aligned = nullptr;
};

Emulator& emulator() {
  static Emulator* instance = new Emulator();  // never destroyed: fibers may outlive statics
  return *instance;
}

const char* op_name(WarpOp op) {
  // In WarpOp's order.
  static constexpr const char* kNames[] = {"__syncwarp",       "__shfl_sync",    "__shfl_xor_sync",
                                           "__shfl_down_sync", "__shfl_up_sync", "__ballot_sync",
                                           "__match_any_sync"};
  static_assert(std::size(kNames) == static_cast<std::size_t>(WarpOp::kMatchAny) + 1);
  const auto index = static_cast<std::size_t>(op);
  return index < std::size(kNames) ? kNames[index] : "warp collective";
}

std::string format(const char* pattern, ...) __attribute__((format(printf, 1, 2)));
std::string format(const char* pattern, ...) {
  char buffer[512];
  va_list args;
  va_start(args, pattern);
  std::vsnprintf(buffer, sizeof(buffer), pattern, args);
  va_end(args);
  return buffer;
}

std::string where(const Thread& t) {
  switch (t.state) {
    case State::kBarrier:
      return format("waits at the barrier at %s:%d", t.file, t.line);
    case State::kWarp:
      return format("waits at %s(mask 0x%08x)", op_name(t.op), t.mask);
    case State::kExited:
      return "has exited";
    case State::kFaulted:
      return "faulted";
    case State::kReady:
      break;
  }
  return "is runnable";
}

// Orders `indices` (ascending on entry) for the schedule, back to front for popping.
void order(Emulator& e, std::vector<int>& indices) {
  switch (e.schedule) {
    case Schedule::kForward:
      std::reverse(indices.begin(), indices.end());
      break;
    case Schedule::kReverse:
      break;
    case Schedule::kRandom:
      std::shuffle(indices.begin(), indices.end(), e.random);
      break;
  }
}

void fiber_main() {
  Emulator& e = emulator();
  Thread* self = e.current;
  detail::context_entered(e.scheduler);
  e.invoke(e.closure);
  self->state = State::kExited;
  detail::context_switch(self->context, e.scheduler);
  __builtin_unreachable();
}

// Suspends the calling fiber until the scheduler resumes it.
void suspend(Thread& self) {
  Emulator& e = emulator();
  detail::context_switch(self.context, e.scheduler);
  // Resumed: the scheduler set threadIdx and e.current.
}

Thread& current_thread() {
  Emulator& e = emulator();
  if (e.current == nullptr) {
    std::fprintf(stderr, "cuda_emulator: a device function ran outside an emulated launch\n");
    std::abort();
  }
  return *e.current;
}

// The results of a collective whose lanes (`mask`) have all arrived; `lanes` is the warp's lane 0.
// A shuffle whose source lane is outside the mask reads poison (all bits set), as the source
// value is undefined on a GPU.
void warp_results(Thread* lanes, unsigned int mask) {
  constexpr std::uint64_t kPoison = ~std::uint64_t{0};
  for (int lane = 0; lane < 32; ++lane) {
    if ((mask >> lane & 1u) == 0) continue;
    Thread& t = lanes[lane];
    const int width = t.width >= 1 && t.width <= 32 ? t.width : 32;
    const int segment = lane / width * width;
    int source = lane;
    switch (t.op) {
      case WarpOp::kSync:
        t.result = 0;
        continue;
      case WarpOp::kBallot: {
        std::uint64_t ballot = 0;
        for (int other = 0; other < 32; ++other)
          if ((mask >> other & 1u) && lanes[other].value != 0) ballot |= std::uint64_t{1} << other;
        t.result = ballot;
        continue;
      }
      case WarpOp::kMatchAny: {
        std::uint64_t peers = 0;
        for (int other = 0; other < 32; ++other)
          if ((mask >> other & 1u) && lanes[other].value == t.value)
            peers |= std::uint64_t{1} << other;
        t.result = peers;
        continue;
      }
      case WarpOp::kShfl:
        source = segment + (t.argument & (width - 1));
        break;
      case WarpOp::kShflXor:
        source = lane ^ t.argument;
        if (source >= segment + width || source < segment) source = lane;
        break;
      case WarpOp::kShflDown:
        source = lane + t.argument;
        if (source >= segment + width) source = lane;
        break;
      case WarpOp::kShflUp:
        source = lane - t.argument;
        if (source < segment) source = lane;
        break;
    }
    t.result = source >= 0 && source < 32 && (mask >> source & 1u) ? lanes[source].value : kPoison;
  }
}

// Completes every warp collective whose lanes have all arrived. Returns false with e.fault set
// when a collective can never complete (a named lane exited or does not exist, or lanes disagree).
bool complete_warp_collectives(Emulator& e, std::vector<int>& released) {
  const int count = static_cast<int>(e.threads.size());
  for (int first = 0; first < count; first += 32) {
    unsigned int done = 0;
    for (int lane = 0; lane < 32 && first + lane < count; ++lane) {
      const Thread& t = e.threads[first + lane];
      if (t.state != State::kWarp || (done >> lane & 1u)) continue;
      if ((t.mask >> lane & 1u) == 0) {
        e.fault = format("thread %d calls %s with mask 0x%08x, which does not name its own lane %d",
                         t.linear, op_name(t.op), t.mask, lane);
        return false;
      }
      bool arrived = true;
      for (int other = 0; other < 32; ++other) {
        if ((t.mask >> other & 1u) == 0) continue;
        if (first + other >= count) {
          e.fault = format(
              "thread %d calls %s with mask 0x%08x naming lane %d, which does not exist (the "
              "block has %d threads)",
              t.linear, op_name(t.op), t.mask, other, count);
          return false;
        }
        const Thread& u = e.threads[first + other];
        if (u.state == State::kExited) {
          e.fault = format(
              "thread %d calls %s with mask 0x%08x naming lane %d (thread %d), which has exited",
              t.linear, op_name(t.op), t.mask, other, u.linear);
          return false;
        }
        if (u.state != State::kWarp || u.mask != t.mask) {
          arrived = false;
        } else if (u.op != t.op) {
          e.fault = format(
              "lanes of mask 0x%08x meet at different warp collectives: thread %d at "
              "%s, thread %d at %s",
              t.mask, t.linear, op_name(t.op), u.linear, op_name(u.op));
          return false;
        }
      }
      if (!arrived) continue;
      done |= t.mask;
      warp_results(e.threads.data() + first, t.mask);
      for (int other = 0; other < 32; ++other) {
        if (t.mask >> other & 1u) released.push_back(first + other);
      }
    }
  }
  return true;
}

// Completes the block barrier when every live thread waits at the same one.
bool complete_barrier(Emulator& e, std::vector<int>& released) {
  const Thread* first = nullptr;
  for (const Thread& t : e.threads) {
    if (t.state == State::kExited) continue;
    if (t.state != State::kBarrier) return false;
    if (first == nullptr) {
      first = &t;
    } else if (t.line != first->line || std::strcmp(t.file, first->file) != 0 ||
               t.barrier_kind != first->barrier_kind) {
      return false;
    }
  }
  if (first == nullptr) return false;
  int any = 0, all = 1, count = 0;
  for (const Thread& t : e.threads) {
    if (t.state != State::kBarrier) continue;
    any |= t.predicate != 0;
    all &= t.predicate != 0;
    count += t.predicate != 0;
  }
  const int result = first->barrier_kind == BarrierKind::kOr      ? any
                     : first->barrier_kind == BarrierKind::kAnd   ? all
                     : first->barrier_kind == BarrierKind::kCount ? count
                                                                  : 0;
  for (Thread& t : e.threads) {
    if (t.state != State::kBarrier) continue;
    t.result = static_cast<std::uint64_t>(result);
    released.push_back(t.linear);
  }
  return true;
}

// Nothing can run and nothing can complete: describes why.
std::string describe_deadlock(const Emulator& e) {
  // A lane missing from a warp collective is the more specific report: give it first.
  for (const Thread& t : e.threads) {
    if (t.state != State::kWarp) continue;
    const int first = t.linear / 32 * 32;
    for (int other = 0; other < 32; ++other) {
      if ((t.mask >> other & 1u) == 0) continue;
      const Thread& u = e.threads[first + other];
      if (u.state != State::kWarp || u.mask != t.mask) {
        return format(
            "thread %d calls %s with mask 0x%08x, but lane %d (thread %d) did not "
            "arrive: it %s",
            t.linear, op_name(t.op), t.mask, other, u.linear, where(u).c_str());
      }
    }
  }

  const Thread* at_barrier = nullptr;
  for (const Thread& t : e.threads)
    if (t.state == State::kBarrier) {
      at_barrier = &t;
      break;
    }
  if (at_barrier != nullptr) {
    for (const Thread& t : e.threads) {
      if (t.state == State::kExited || t.state == State::kBarrier) {
        if (t.state == State::kBarrier &&
            (t.line != at_barrier->line || std::strcmp(t.file, at_barrier->file) != 0)) {
          return format(
              "__syncthreads not reached by every live thread: thread %d waits at %s:%d, thread "
              "%d at %s:%d",
              at_barrier->linear, at_barrier->file, at_barrier->line, t.linear, t.file, t.line);
        }
        continue;
      }
      return format(
          "__syncthreads not reached by every live thread: thread %d waits at %s:%d, "
          "thread %d %s",
          at_barrier->linear, at_barrier->file, at_barrier->line, t.linear, where(t).c_str());
    }
  }
  return "no thread can make progress";
}

void resume(Emulator& e, Thread& t) {
  e.current = &t;
  threadIdx = t.index;
  t.state = State::kReady;
  detail::context_switch(e.scheduler, t.context);
  e.current = nullptr;
  if (t.state == State::kExited) --e.live;
}

// Runs one block to completion; false with e.fault set on a fault.
bool run_block(Emulator& e) {
  const int count = static_cast<int>(e.threads.size());
  for (int i = 0; i < count; ++i) {
    Thread& t = e.threads[i];
    t.state = State::kReady;
    detail::context_init(t.context, e.stacks[i]->base(), e.stacks[i]->size(), fiber_main);
  }
  if (!e.shared.empty()) std::memset(e.shared_aligned, 0xFF, e.config->shared_bytes);
  e.live = count;
  e.ready.resize(count);
  for (int i = 0; i < count; ++i) e.ready[i] = i;
  order(e, e.ready);
  std::vector<int> released;
  while (true) {
    while (!e.ready.empty()) {
      const int next = e.ready.back();
      e.ready.pop_back();
      resume(e, e.threads[next]);
      if (e.threads[next].state == State::kFaulted) return false;
    }
    if (e.live == 0) return true;
    released.clear();
    if (!complete_warp_collectives(e, released)) return false;
    if (released.empty() && !complete_barrier(e, released)) {
      e.fault = describe_deadlock(e);
      return false;
    }
    std::sort(released.begin(), released.end());
    order(e, released);
    for (int index : released) e.threads[index].state = State::kReady;
    e.ready = released;
  }
}

std::string dim_string(dim3 d) { return format("(%u, %u, %u)", d.x, d.y, d.z); }

// A launch the hardware would refuse; "" when it is valid.
std::string configuration_fault(const LaunchConfig& c) {
  const unsigned long long threads =
      static_cast<unsigned long long>(c.block.x) * c.block.y * c.block.z;
  if (threads == 0 || threads > kMaxThreadsPerBlock || c.block.z > 64)
    return format("a block of %llu threads %s: at most 1024 (and blockDim.z <= 64)", threads,
                  threads == 0 ? "is empty" : "is too large");
  if (c.grid.x == 0 || c.grid.y == 0 || c.grid.z == 0) return "the grid is empty";
  if (c.grid.x > kMaxGridX) return format("gridDim.x = %u exceeds 2^31 - 1", c.grid.x);
  if (c.grid.y > kMaxGridYZ || c.grid.z > kMaxGridYZ)
    return format("gridDim.y = %u, gridDim.z = %u: each must be at most 65535", c.grid.y, c.grid.z);
  if (c.shared_bytes > static_cast<std::size_t>(kSharedOptinBytes))
    return format("%zu bytes of dynamic shared memory exceed the sm_90 opt-in limit of %d bytes",
                  c.shared_bytes, kSharedOptinBytes);
  const int limit = dynamic_shared_limit(c.key);
  if (c.shared_bytes > static_cast<std::size_t>(limit))
    return format(
        "%zu bytes of dynamic shared memory exceed the kernel's limit of %d bytes (48 "
        "KiB unless cudaFuncSetAttribute(cudaFuncAttributeMaxDynamicSharedMemorySize) "
        "raised it)",
        c.shared_bytes, limit);
  return "";
}

cudaError_t report(const LaunchConfig& c, cudaError_t code, const std::string& fault) {
  record_error(code, format("emulated CUDA kernel %s (launched from %s, grid %s, block %s, %zu "
                            "bytes dynamic shared memory): ",
                            c.kernel, c.launched_from, dim_string(c.grid).c_str(),
                            dim_string(c.block).c_str(), c.shared_bytes) +
                         fault);
  return code;
}

void prepare_threads(Emulator& e, dim3 block) {
  const int count = static_cast<int>(block.x * block.y * block.z);
  while (static_cast<int>(e.stacks.size()) < count)
    e.stacks.push_back(std::make_unique<Stack>(kStackBytes));
  e.threads.assign(count, Thread{});
  for (int i = 0; i < count; ++i) {
    Thread& t = e.threads[i];
    t.linear = i;
    t.index = uint3{static_cast<unsigned int>(i) % block.x,
                    static_cast<unsigned int>(i) / block.x % block.y,
                    static_cast<unsigned int>(i) / (block.x * block.y)};
  }
}

void prepare_shared(Emulator& e, std::size_t bytes) {
  e.shared.assign(bytes + 16 + 64, 0);  // never empty: a zero-byte request still gets a pointer
  auto address = reinterpret_cast<uintptr_t>(e.shared.data());
  e.shared_aligned = reinterpret_cast<unsigned char*>((address + 63) & ~uintptr_t{63});
}

}  // namespace

void configure(Schedule schedule, std::uint64_t seed) {
  Emulator& e = emulator();
  std::lock_guard<std::mutex> lock(e.launch_mutex);
  e.schedule = schedule;
  e.random.seed(seed);
}

cudaError_t run_kernel(const LaunchConfig& config, void (*invoke)(const void*),
                       const void* closure) {
  if (launches_blocked()) return pending_error();
  const std::string invalid = configuration_fault(config);
  if (!invalid.empty()) return report(config, cudaErrorInvalidConfiguration, invalid);
  Emulator& e = emulator();
  std::lock_guard<std::mutex> lock(e.launch_mutex);
  e.config = &config;
  e.invoke = invoke;
  e.closure = closure;
  prepare_threads(e, config.block);
  prepare_shared(e, config.shared_bytes);
  blockDim = config.block;
  gridDim = config.grid;
  const unsigned long long blocks =
      static_cast<unsigned long long>(config.grid.x) * config.grid.y * config.grid.z;
  std::vector<int> shuffled;
  if (e.schedule == Schedule::kRandom) {
    shuffled.resize(blocks);
    for (unsigned long long b = 0; b < blocks; ++b) shuffled[b] = static_cast<int>(b);
    std::shuffle(shuffled.begin(), shuffled.end(), e.random);
  }
  for (unsigned long long n = 0; n < blocks; ++n) {
    const unsigned long long b = e.schedule == Schedule::kForward   ? n
                                 : e.schedule == Schedule::kReverse ? blocks - 1 - n
                                                                    : shuffled[n];
    blockIdx = uint3{static_cast<unsigned int>(b % config.grid.x),
                     static_cast<unsigned int>(b / config.grid.x % config.grid.y),
                     static_cast<unsigned int>(b / (config.grid.x * config.grid.y))};
    if (!run_block(e)) {
      const std::string block = format("block (%u, %u, %u): ", blockIdx.x, blockIdx.y, blockIdx.z);
      e.config = nullptr;
      return report(config, cudaErrorLaunchFailure, block + e.fault);
    }
  }
  e.config = nullptr;
  return cudaSuccess;
}

unsigned char* dynamic_shared_memory() {
  Emulator& e = emulator();
  current_thread();
  return e.shared_aligned;
}

// Suspends the calling thread, which has recorded what it waits for, in `state` until the
// scheduler completes it; returns the result the scheduler left.
std::uint64_t wait_in(Thread& self, State state) {
  self.state = state;
  suspend(self);
  return self.result;
}

int block_barrier(BarrierKind kind, int predicate, const char* file, int line) {
  Thread& self = current_thread();
  self.barrier_kind = kind;
  self.predicate = predicate;
  self.file = file;
  self.line = line;
  return static_cast<int>(wait_in(self, State::kBarrier));
}

std::uint64_t warp_collective(WarpOp op, unsigned int mask, std::uint64_t value, int argument,
                              int width) {
  Thread& self = current_thread();
  self.op = op;
  self.mask = mask;
  self.value = value;
  self.argument = argument;
  self.width = width;
  return wait_in(self, State::kWarp);
}

void require_block_threads(const char* collective, int threads) {
  Emulator& e = emulator();
  Thread& self = current_thread();
  if (static_cast<int>(e.threads.size()) == threads) return;
  // Like a device trap: the thread never resumes and the launch fails.
  e.fault = format("thread %d calls %s for %d threads in a block of %zu threads", self.linear,
                   collective, threads, e.threads.size());
  self.state = State::kFaulted;
  suspend(self);
  __builtin_unreachable();
}

}  // namespace cuda_emulator
