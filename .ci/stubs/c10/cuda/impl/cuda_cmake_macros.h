// CI stand-in for a header a CUDA build of PyTorch generates and a CPU wheel lacks; just enough
// for the compile check of csrc/cuda/*.cpp (the torch-side CUDA bindings) against the CPU
// wheel's headers. Never used by a real build.
#pragma once
#define C10_CUDA_BUILD_SHARED_LIBS
