"""Builds vidllm_ext._C with CMake.

Knobs (environment variables):
  VIDLLM_CUDA=auto|0|1   auto (default): compile the CUDA kernels whenever nvcc is found, GPU or
                         not; 1: fail unless nvcc is found; 0: CPU kernels only.
  VIDLLM_CUDA_ARCHS      compute capabilities to compile, default "80;90"; the newest also gets PTX
                         so newer GPUs can JIT it.
  VIDLLM_CUDA_EMULATION=0|1
                         1: also compile every .cu with the host compiler for the emulator of the
                         CUDA execution model (csrc/cuda_emulator), which
                         vidllm_ext.testing.emulated_cuda() runs ops on. Default 0.
  CUDA_HOME / CUDACXX    where to look for nvcc (else /usr/local/cuda, else PATH).
  MAX_JOBS               parallel compile jobs (default: all cores).
  VIDLLM_SANITIZE=1      ASan + UBSan build of the C++ kernels and bindings (.ci/sanitize.sh).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()


def find_nvcc() -> "str | None":
    candidates = [os.environ.get("CUDACXX")]
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home:
            candidates.append(os.path.join(home, "bin", "nvcc"))
    candidates.append(shutil.which("nvcc"))
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def cuda_setting() -> "tuple[bool, str | None]":
    mode = os.environ.get("VIDLLM_CUDA", "auto").strip().lower()
    if mode not in ("auto", "0", "1"):
        raise RuntimeError(f"VIDLLM_CUDA must be auto, 0 or 1, got {mode!r}")
    if mode == "0":
        return False, None
    nvcc = find_nvcc()
    if nvcc is None and mode == "1":
        raise RuntimeError(
            "VIDLLM_CUDA=1 but no CUDA compiler was found: set CUDA_HOME or CUDACXX, or put nvcc "
            "on PATH (or use VIDLLM_CUDA=auto to build the CPU kernels only)"
        )
    return nvcc is not None, nvcc


def emulation_setting() -> bool:
    mode = os.environ.get("VIDLLM_CUDA_EMULATION", "0").strip().lower()
    if mode not in ("0", "1"):
        raise RuntimeError(f"VIDLLM_CUDA_EMULATION must be 0 or 1, got {mode!r}")
    return mode == "1"


def cmake_cuda_archs(spec: str) -> str:
    """'80;90' -> '80-real;90': machine code for each, PTX for the newest as well."""
    archs = [a.strip() for a in spec.replace(",", ";").split(";") if a.strip()]
    if not archs or not all(a.rstrip("a").isdigit() for a in archs):
        raise RuntimeError(f"VIDLLM_CUDA_ARCHS must look like '80;90', got {spec!r}")
    archs.sort(key=lambda a: int(a.rstrip("a")))
    return ";".join([f"{a}-real" for a in archs[:-1]] + [archs[-1]])


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def package_version() -> str:
    scope: dict = {}
    exec((ROOT / "vidllm_ext" / "_version.py").read_text(), scope)
    return scope["__version__"]


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        import pybind11

        with_cuda, nvcc = cuda_setting()
        with_emulation = emulation_setting()
        output_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        # A fixed build folder per interpreter, so `pip install -e .` rebuilds only what changed.
        build_dir = ROOT / "build" / f"cmake-py{sys.version_info[0]}{sys.version_info[1]}"
        build_dir.mkdir(parents=True, exist_ok=True)
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={output_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DVIDLLM_VERSION={package_version()}",
            f"-DVIDLLM_GIT_COMMIT={git_commit()}",
            f"-DVIDLLM_CUDA={'ON' if with_cuda else 'OFF'}",
            f"-DVIDLLM_SANITIZE={'ON' if os.environ.get('VIDLLM_SANITIZE') == '1' else 'OFF'}",
            f"-DVIDLLM_CUDA_EMULATION={'ON' if with_emulation else 'OFF'}",
            "-GNinja",  # ninja is a build requirement; it tracks header dependencies exactly
        ]
        if with_cuda:
            archs = cmake_cuda_archs(os.environ.get("VIDLLM_CUDA_ARCHS", "80;90"))
            args += [f"-DCMAKE_CUDA_COMPILER={nvcc}", f"-DCMAKE_CUDA_ARCHITECTURES={archs}"]
        kinds = "CPU + CUDA" if with_cuda else "CPU-only"
        if with_emulation:
            kinds += " + emulated CUDA"
        print(f"vidllm_ext: building {kinds} kernels", flush=True)
        subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build_dir), *args], check=True)
        jobs = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 1)
        subprocess.run(["cmake", "--build", str(build_dir), "-j", jobs], check=True)


setup(
    version=package_version(),
    ext_modules=[Extension("vidllm_ext._C", sources=[])],
    cmdclass={"build_ext": CMakeBuild},
)
