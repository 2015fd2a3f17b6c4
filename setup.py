"""Packaging for lookaround-fused."""

from setuptools import find_packages, setup

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
)
