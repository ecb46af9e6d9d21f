"""Build script: one compiled module, fastmtl._C, with CPU kernels and (optionally) CUDA kernels.

Environment switches:
  FASTMTL_CPU_ONLY=1    skip the CUDA kernels (fast local build)
  FASTMTL_FORCE_CUDA=1  build the CUDA kernels even when no GPU is visible
  TORCH_CUDA_ARCH_LIST  GPU architectures to compile for (default "8.0;9.0" without a GPU)
"""

import glob
import os
from pathlib import Path

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = Path(__file__).parent
CSRC = ROOT / "csrc"


def _flag(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0", "false", "False")


def _build_cuda() -> bool:
    if _flag("FASTMTL_CPU_ONLY"):
        return False
    if _flag("FASTMTL_FORCE_CUDA"):
        return True
    return torch.version.cuda is not None and CUDA_HOME is not None


def _cuda_library_includes() -> list[str]:
    # PyTorch's CUDA headers include cuBLAS/cuSPARSE headers that a bare nvcc toolkit
    # lacks; PyTorch's CUDA wheels ship them under site-packages/nvidia/cu*/include.
    site = Path(torch.__file__).resolve().parent.parent
    return sorted(glob.glob(str(site / "nvidia" / "cu*" / "include")))


def _link_cudart(ext) -> None:
    # Build machines may have nvcc without an unversioned libcudart.so to link against;
    # PyTorch's CUDA wheels bring libcudart.so.<major>, which torch itself loads at run time.
    site = Path(torch.__file__).resolve().parent.parent
    candidates = [Path(CUDA_HOME or "/usr/local/cuda") / d for d in ("lib64", "lib")]
    candidates += [Path(p) for p in sorted(glob.glob(str(site / "nvidia" / "cu*" / "lib")))]
    candidates += [Path("/usr/local/cuda/lib64")]
    for folder in candidates:
        if (folder / "libcudart.so").exists():
            ext.library_dirs.append(str(folder))
            return
        versioned = sorted(folder.glob("libcudart.so.*"))
        if versioned:
            ext.library_dirs.append(str(folder))
            ext.libraries = [f":{versioned[0].name}" if lib == "cudart" else lib
                             for lib in ext.libraries]
            return


def _extension():
    sources = [str(p.relative_to(ROOT)) for p in sorted(CSRC.glob("*.cpp"))]
    sources += [str(p.relative_to(ROOT)) for p in sorted((CSRC / "cpu").glob("*.cpp"))]
    include_dirs = [str(CSRC / "include")]
    # -std=c++20 turns off FMA contraction; the kernels want it. at::parallel_for is an
    # inline OpenMP region in PyTorch's headers: without -fopenmp it runs serially. Nothing
    # here traps on floating-point exceptions, and -fno-trapping-math lets GCC turn the
    # compare-and-select loops (GradDrop's decision) into vector blends instead of branches.
    cxx_flags = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=fast", "-fopenmp"]
    link_flags = ["-fopenmp"]
    if not _build_cuda():
        return CppExtension("fastmtl._C", sources, include_dirs=include_dirs,
                            extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags)
    if not torch.cuda.is_available() and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
    sources += [str(p.relative_to(ROOT)) for p in sorted((CSRC / "cuda").glob("*.cu"))]
    ext = CUDAExtension(
        "fastmtl._C",
        sources,
        include_dirs=include_dirs + _cuda_library_includes(),
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo"]},
        extra_link_args=link_flags,
    )
    _link_cudart(ext)
    return ext


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
