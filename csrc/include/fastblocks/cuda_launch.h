// The one way a .cu file launches a kernel:
//   FB_LAUNCH(grid, block, smem_bytes, stream, kernel)(args...);
// Under nvcc it is kernel<<<grid, block, smem_bytes, stream>>>(args...). Under the host
// emulation (csrc/emu/cuda_emu.h, force-included before the .cu file) it runs the kernel's
// blocks as fibers on the CPU, which is how CI runs the CUDA kernels (tests/test_cuda_emu.py).
// The kernel goes last so template arguments with commas need no extra parentheses.
#pragma once

#ifndef FB_LAUNCH
#define FB_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#endif
