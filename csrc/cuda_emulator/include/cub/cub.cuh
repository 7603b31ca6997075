// Emulation stand-in for <cub/cub.cuh>; see cuda_emulator/cub.h.
#pragma once
#include "cuda_emulator/cub.h"
