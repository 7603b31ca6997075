// The emulator's settings, for the code that drives it (the bindings); no CUDA types here.
#pragma once

#include <cstdint>

namespace cuda_emulator {

// The order in which blocks run, and in which a block's threads start and resume after each
// barrier or warp collective: thread (block) index ascending, descending, or a seeded shuffle.
enum class Schedule : int { kForward = 0, kReverse = 1, kRandom = 2 };

// Applies to the launches that follow, in every thread; restarts the random sequence at `seed`.
void configure(Schedule schedule, std::uint64_t seed);

}  // namespace cuda_emulator
