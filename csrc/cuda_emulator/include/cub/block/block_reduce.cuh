// Emulation stand-in for cub's block reduce; see cuda_emulator/cub.h.
#pragma once
#include "cuda_emulator/cub.h"
