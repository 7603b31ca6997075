// Shared by the emulator's own translation units: the runtime's error slot and the per-kernel
// dynamic shared memory limits.
#pragma once

#include <string>

#include "cuda_emulator/cuda_emulator.h"

namespace cuda_emulator {

// sm_90's opt-in maximum of dynamic shared memory per block (227 KiB), and the default.
constexpr int kSharedOptinBytes = 232448;
constexpr int kSharedDefaultBytes = 48 * 1024;

// Records a failed launch for cudaGetLastError (the first error stays until it is read) and
// keeps `message` for cudaGetErrorString. Per OS thread, like the runtime's error slot.
void record_error(cudaError_t code, std::string message);

// True while a launch failure is unread: later launches are skipped, as after a device fault.
bool launches_blocked();
cudaError_t pending_error();

// The kernel's dynamic shared memory limit: 48 KiB unless cudaFuncSetAttribute raised it.
int dynamic_shared_limit(const void* kernel);

}  // namespace cuda_emulator
