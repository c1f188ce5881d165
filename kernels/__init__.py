"""Triton kernels of fastblocks, installed as the package ``fastblocks.kernels``.

One module per op family: its ``@triton.jit`` kernels (forward and backward) and launchers
that check shapes, allocate outputs, compute the grid and launch. No autograd here: that is
fastblocks.ops. Imported lazily by the ops so ``import fastblocks`` does not need Triton.
"""
