// Emulation stand-in: the runtime API lives in cuda_emulator/cuda_emulator.h.
#pragma once
#include "cuda_emulator/cuda_emulator.h"
