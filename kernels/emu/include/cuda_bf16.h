// The emulator's cuda_bf16.h: the bf16 types come with the device shim.
#pragma once
#include "lf_emu_device.h"
