"""Builds fastblocks._C: CPU kernels always, CUDA kernels when PyTorch has CUDA and nvcc exists.

Set FASTBLOCKS_NO_CUDA=1 to build the CPU kernels only on a CUDA machine.
"""
import glob
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _extension():
    import torch
    from torch.utils import cpp_extension as ce

    rel = lambda pattern: sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))
    sources = ["csrc/ops.cpp"] + rel("csrc/cpu/*.cpp") + rel("csrc/autograd/*.cpp")
    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    # -fopenmp: at::parallel_for in our headers only spreads work over threads when the
    # extension itself is compiled with OpenMP.
    cxx = ["-O3", "-std=c++20", "-fopenmp"]
    with_cuda = (
        os.environ.get("FASTBLOCKS_NO_CUDA") != "1"
        and torch.version.cuda is not None
        and ce.CUDA_HOME is not None
    )
    if with_cuda:
        sources += rel("csrc/cuda/*.cpp") + rel("csrc/cuda/*.cu")
        nvcc = ["-O3", "-std=c++20", "-lineinfo"]
        return ce.CUDAExtension(
            "fastblocks._C", sources, include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=["-fopenmp"],
        )
    return ce.CppExtension(
        "fastblocks._C", sources, include_dirs=include_dirs,
        extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"],
    )


def main():
    from torch.utils.cpp_extension import BuildExtension

    setup(
        ext_modules=[_extension()],
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    )


if __name__ == "__main__":
    main()
