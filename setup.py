"""Packaging for lookaround-fused."""

import importlib.util
import os

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension


def extension_modules() -> list:
    """``lookaround_fused._C``, with its CUDA kernels when torch is a CUDA build and nvcc is found."""
    here = os.path.dirname(os.path.abspath(__file__))
    # The build description is shared with the just-in-time build; the file imports only torch.
    description = os.path.join(here, "lookaround_fused", "_extension.py")
    spec = importlib.util.spec_from_file_location("_lookaround_build", description)
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    cuda_problem = build.cuda_toolchain_problem()
    if cuda_problem:
        print(f"lookaround-fused: building the C++ extension without CUDA kernels: {cuda_problem}")
    elif not torch.cuda.is_available():
        # With no GPU to detect, compile for every architecture this torch supports.
        arches = [f"{sm[3:-1]}.{sm[-1]}" for sm in torch.cuda.get_arch_list() if sm[:3] == "sm_" and sm[3:].isdigit()]
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", ";".join(arches) + "+PTX")
    with_cuda = cuda_problem is None
    extension = CUDAExtension if with_cuda else CppExtension
    return [
        extension(
            name="lookaround_fused._C",
            sources=[os.path.relpath(path, here) for path in build.sources(with_cuda)],
            define_macros=[("WITH_CUDA", None)] if with_cuda else [],
            extra_compile_args={"cxx": list(build.CXX_FLAGS), "nvcc": list(build.NVCC_FLAGS)},
            extra_link_args=list(build.LINK_FLAGS),
        )
    ]


setup(
    name="lookaround-fused",
    version="0.1.0",
    description="Lookaround optimizer for PyTorch with flat multi-branch buffers and fused Triton/C++ backends",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["lookaround_fused", "lookaround_fused.*"]),
    install_requires=["torch>=2.4"],
    extras_require={
        "test": ["pytest", "pytest-benchmark"],
        "train": ["torchvision", "scikit-learn", "tqdm", "matplotlib"],
    },
    entry_points={"console_scripts": ["lookaround-train = lookaround_fused.train:main"]},
    ext_modules=extension_modules(),
    cmdclass={"build_ext": BuildExtension},
)
