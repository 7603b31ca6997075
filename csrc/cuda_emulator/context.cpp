#include "cuda_emulator/context.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <new>

#if defined(CUDA_EMULATOR_ASAN)
#include <sanitizer/common_interface_defs.h>
#endif

#if defined(CUDA_EMULATOR_ASM_SWITCH)
// cuda_emulator_switch(void** save_sp, void* load_sp): pushes the callee-saved registers and the
// floating-point control state, stores the stack pointer in *save_sp, loads load_sp and pops the
// same from there. A fresh context's stack holds zeros, default control words and entry().
asm(R"(
  .text
  .p2align 4
  .globl cuda_emulator_switch
  .hidden cuda_emulator_switch
  .type cuda_emulator_switch,@function
cuda_emulator_switch:
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
  .size cuda_emulator_switch,.-cuda_emulator_switch
  .section .note.GNU-stack,"",@progbits
  .text
)");
extern "C" void cuda_emulator_switch(void** save_sp, void* load_sp);
#endif

namespace cuda_emulator::detail {

#if defined(CUDA_EMULATOR_ASM_SWITCH)

void context_init(Context& context, void* stack_base, std::size_t stack_size, void (*entry)()) {
  context.stack_base = stack_base;
  context.stack_size = stack_size;
  auto top = reinterpret_cast<uintptr_t>(stack_base) + stack_size;
  top &= ~uintptr_t{15};
  auto* slot = reinterpret_cast<uint64_t*>(top);
  *--slot = 0;                                            // entry()'s would-be return address
  *--slot = reinterpret_cast<uint64_t>(entry);            // popped by `ret`: rsp % 16 == 8 at entry
  for (int i = 0; i < 6; ++i) *--slot = 0;                // rbp, rbx, r12 .. r15
  *--slot = uint64_t{0x1F80} | (uint64_t{0x037F} << 32);  // MXCSR and x87 control word defaults
  context.stack_pointer = slot;
}

void context_switch(Context& from, Context& to) {
#if defined(CUDA_EMULATOR_ASAN)
  void* fake_stack = nullptr;
  __sanitizer_start_switch_fiber(&fake_stack, to.stack_base, to.stack_size);
  cuda_emulator_switch(&from.stack_pointer, to.stack_pointer);
  __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#else
  cuda_emulator_switch(&from.stack_pointer, to.stack_pointer);
#endif
}

#else

void context_init(Context& context, void* stack_base, std::size_t stack_size, void (*entry)()) {
  context.stack_base = stack_base;
  context.stack_size = stack_size;
  getcontext(&context.context);
  context.context.uc_stack.ss_sp = stack_base;
  context.context.uc_stack.ss_size = stack_size;
  context.context.uc_link = nullptr;
  makecontext(&context.context, entry, 0);
}

void context_switch(Context& from, Context& to) {
#if defined(CUDA_EMULATOR_ASAN)
  void* fake_stack = nullptr;
  __sanitizer_start_switch_fiber(&fake_stack, to.stack_base, to.stack_size);
  swapcontext(&from.context, &to.context);
  __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#else
  swapcontext(&from.context, &to.context);
#endif
}

#endif

void context_entered(Context& resumer) {
#if defined(CUDA_EMULATOR_ASAN)
  const void* bottom = nullptr;
  __sanitizer_finish_switch_fiber(nullptr, &bottom, &resumer.stack_size);
  resumer.stack_base = const_cast<void*>(bottom);
#else
  (void)resumer;
#endif
}

Stack::Stack(std::size_t size) {
  const auto page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  size_ = (size + page - 1) / page * page;
  mapping_size_ = size_ + page;
  mapping_ = mmap(nullptr, mapping_size_, PROT_READ | PROT_WRITE,
                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (mapping_ == MAP_FAILED) throw std::bad_alloc();
  mprotect(mapping_, page, PROT_NONE);  // guard page: stacks grow down into it
  base_ = static_cast<char*>(mapping_) + page;
}

Stack::~Stack() { munmap(mapping_, mapping_size_); }

}  // namespace cuda_emulator::detail
