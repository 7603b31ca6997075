// Cooperative fibers for the emulated threads of a block: a stack and a saved context each, and
// one switch that saves the running context and resumes another. x86-64 uses a hand-written
// switch (callee-saved registers, MXCSR and the x87 control word: about 20 ns), announced to
// AddressSanitizer around every switch in sanitized builds; elsewhere ucontext (about 0.7 us).
#pragma once

#include <cstddef>

#if defined(__SANITIZE_ADDRESS__)
#define CUDA_EMULATOR_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CUDA_EMULATOR_ASAN 1
#endif
#endif

#if defined(__x86_64__) && !defined(CUDA_EMULATOR_UCONTEXT)
#define CUDA_EMULATOR_ASM_SWITCH 1
#else
#include <ucontext.h>
#endif

namespace cuda_emulator::detail {

struct Context {
#if defined(CUDA_EMULATOR_ASM_SWITCH)
  void* stack_pointer = nullptr;
#else
  ucontext_t context;
#endif
  // The stack this context runs on (null for the scheduler's own), for sanitizer annotations.
  void* stack_base = nullptr;
  std::size_t stack_size = 0;
};

// Prepares `context` to run entry() on [stack_base, stack_base + stack_size) when first resumed.
// entry must never return: it ends by switching away for good.
void context_init(Context& context, void* stack_base, std::size_t stack_size, void (*entry)());

// Saves the running context in `from` and resumes `to`.
void context_switch(Context& from, Context& to);

// First call of every fiber entry: completes the switch that started it (AddressSanitizer learns
// the stack of `resumer`, the context that switched to it).
void context_entered(Context& resumer);

// A fiber stack with a guard page below it (an overflow faults instead of corrupting memory).
class Stack {
 public:
  explicit Stack(std::size_t size);
  ~Stack();
  Stack(const Stack&) = delete;
  Stack& operator=(const Stack&) = delete;
  void* base() const { return base_; }
  std::size_t size() const { return size_; }

 private:
  void* mapping_ = nullptr;
  std::size_t mapping_size_ = 0;
  void* base_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace cuda_emulator::detail
