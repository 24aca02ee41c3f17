"""Build script for pysteer (its metadata and dependencies are in pyproject.toml).

The pure-Python package always installs. When a CUDA compiler is found, the fused
kernels in csrc/ are built by CMake into the extension ``pysteer._C``; a failure of
that build fails the install, since a found toolchain that cannot build is a real
error. Environment switches:

- ``PYSTEER_SKIP_CUDA_BUILD=1``  install without building the extension
- ``PYSTEER_CUDA_ARCHS``         CMake CUDA architectures, default ``80;90``
- ``PYSTEER_BUILD_JOBS``         parallel compile jobs, default: all cores
- ``PYSTEER_BUILD_DIR``          CMake build tree, default ``build/cmake.<platform>-<python>``
                                 (kept between builds so rebuilds are incremental)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def find_nvcc() -> str | None:
    """$CUDA_HOME/bin/nvcc (or $CUDA_PATH), else nvcc on PATH, else the usual install dir."""
    for env in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(env)
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    found = shutil.which("nvcc")
    if found:
        return found
    default = Path("/usr/local/cuda/bin/nvcc")
    return str(default) if default.is_file() else None


class CMakeExtension(Extension):
    """An extension whose sources CMake knows; setuptools only needs its name."""

    def __init__(self, name: str, source_dir: Path):
        super().__init__(name, sources=[])
        self.source_dir = str(source_dir)


class CMakeBuild(build_ext):
    """Configure and build CMakeLists.txt, leaving the module at get_ext_fullpath()."""

    def build_extension(self, ext: Extension) -> None:
        if not isinstance(ext, CMakeExtension):
            return super().build_extension(ext)
        import pybind11

        nvcc = find_nvcc()
        cmake = shutil.which("cmake")
        if cmake is None:
            raise RuntimeError("pysteer: nvcc was found but cmake was not; "
                               "`pip install cmake` or set PYSTEER_SKIP_CUDA_BUILD=1")
        out_path = Path(self.get_ext_fullpath(ext.name)).resolve()
        out_path.parent.mkdir(parents=True, exist_ok=True)
        build_dir = Path(os.environ.get("PYSTEER_BUILD_DIR") or ROOT / "build" / (
            f"cmake.{sysconfig.get_platform()}-{sys.implementation.cache_tag}"))
        build_dir.mkdir(parents=True, exist_ok=True)

        config = "Debug" if self.debug else "Release"
        archs = os.environ.get("PYSTEER_CUDA_ARCHS", "80;90").replace(",", ";").replace(" ", ";")
        args = [
            f"-S{ext.source_dir}",
            f"-B{build_dir}",
            f"-DCMAKE_BUILD_TYPE={config}",
            f"-DCMAKE_CUDA_COMPILER={nvcc}",
            f"-DPYSTEER_CUDA_ARCHS={archs}",
            f"-DPYSTEER_OUTPUT_DIR={out_path.parent}",
            f"-DPYSTEER_OUTPUT_NAME={out_path.name}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DPython3_EXECUTABLE={sys.executable}",
        ]
        cache = build_dir / "CMakeCache.txt"
        ninja = shutil.which("ninja")
        if ninja and not (cache.is_file() and "CMAKE_GENERATOR:INTERNAL=Ninja"
                          not in cache.read_text(errors="ignore")):
            # Pass ninja's path every time: pip's isolated build envs are temporary, and
            # the build tree outlives them.
            args += ["-GNinja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
        jobs = os.environ.get("PYSTEER_BUILD_JOBS") or str(os.cpu_count() or 2)

        print(f"pysteer: building the CUDA extension with {nvcc} for archs {archs} "
              f"({jobs} jobs) in {build_dir}", flush=True)
        if subprocess.run([cmake, *args]).returncode != 0:
            if not cache.is_file():
                raise RuntimeError("pysteer: CMake configuration of the CUDA extension failed")
            # A build tree left by another toolchain or build env: start it afresh once.
            print("pysteer: reconfiguring from scratch", flush=True)
            cache.unlink()
            shutil.rmtree(build_dir / "CMakeFiles", ignore_errors=True)
            subprocess.run([cmake, *args], check=True)
        subprocess.run([cmake, "--build", str(build_dir), "--config", config,
                        "--parallel", jobs], check=True)
        if not out_path.is_file():
            raise RuntimeError(f"pysteer: CMake finished but {out_path} was not produced")


def _ext_modules() -> list[Extension]:
    if _truthy("PYSTEER_SKIP_CUDA_BUILD"):
        print("pysteer: PYSTEER_SKIP_CUDA_BUILD is set; the CUDA extension is skipped "
              "(Triton and PyTorch backends only)", file=sys.stderr)
        return []
    if find_nvcc() is None:
        print("pysteer: nvcc not found (set CUDA_HOME or put nvcc on PATH); the CUDA "
              "extension is skipped (Triton and PyTorch backends only)", file=sys.stderr)
        return []
    return [CMakeExtension("pysteer._C", ROOT)]


# Name, version, dependencies, extras and the console script are in pyproject.toml.
setup(
    packages=find_packages(include=["pysteer", "pysteer.*"]) + ["pysteer.triton_kernels"],
    package_dir={"pysteer.triton_kernels": "triton_kernels"},
    package_data={"pysteer": ["data/**/*.json", "data/**/*.jsonl", "data/**/*.safetensors"]},
    include_package_data=True,
    ext_modules=_ext_modules(),
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
