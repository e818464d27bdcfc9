"""Builds the two extensions through CMake (see CMakeLists.txt).

    alexnet_cuda._emu   always (host C++ compiler; the kernels run on the CPU)
    alexnet_cuda._cuda  when nvcc is found (CUDACXX, PATH, or /usr/local/cuda/bin)

Environment: CUDAARCHS or CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=90" choose the GPU
architectures; ALEXNET_NO_CUDA=1 skips the CUDA extension; CMAKE_BUILD_PARALLEL_LEVEL
sets the build's parallelism (default: all cores).
"""
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def find_nvcc():
    for cand in (os.environ.get("CUDACXX"), shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return cand
    return None


def find_ninja():
    exe = shutil.which("ninja")
    if exe:
        return exe
    try:
        import ninja  # the PyPI package ships the binary

        return str(Path(ninja.BIN_DIR) / "ninja")
    except Exception:
        return None


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        extdir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        import pybind11

        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={extdir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
        ninja = find_ninja()
        if ninja and not (build_dir / "CMakeCache.txt").exists():
            args += ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"]
        nvcc = find_nvcc()
        if os.environ.get("ALEXNET_NO_CUDA") == "1":
            nvcc = None
        if nvcc:
            args.append(f"-DCMAKE_CUDA_COMPILER={nvcc}")
        else:
            args.append("-DALEXNET_WITH_CUDA=OFF")
            print("alexnet-cuda: nvcc not found; building only alexnet_cuda._emu "
                  "(the kernels executed on the CPU); the cuda backend will not be available", flush=True)
        args += shlex.split(os.environ.get("CMAKE_ARGS", ""))
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(os.cpu_count() or 2)
        subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build_dir)] + args, check=True)
        subprocess.run(["cmake", "--build", str(build_dir), "--parallel", jobs], check=True)


setup(ext_modules=[Extension("alexnet_cuda._emu", sources=[])], cmdclass={"build_ext": CMakeBuild})
