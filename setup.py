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


# Tools a CMake cache remembers by path. pip's build isolation deletes the cmake, ninja and pybind11
# of each build when it ends, so the next build from the same checkout finds them gone.
CACHED_TOOL_PATHS = (
    "CMAKE_COMMAND",
    "CMAKE_MAKE_PROGRAM",
    "CMAKE_CXX_COMPILER",
    "CMAKE_CUDA_COMPILER",
)


def read_cmake_cache(cache_file: Path) -> "dict[str, str]":
    """CMakeCache.txt's entries as {name: value} (types and comments dropped)."""
    entries = {}
    for line in cache_file.read_text(errors="replace").splitlines():
        if line.startswith(("#", "//")) or "=" not in line:
            continue
        name_and_type, value = line.split("=", 1)
        entries[name_and_type.split(":", 1)[0]] = value
    return entries


def stale_cmake_cache(build_dir: Path, expected: "dict[str, str]") -> "str | None":
    """Why the CMake cache in build_dir cannot be reused, or None when it can (or there is none).

    expected: cache entries this build configures with ({"Python_EXECUTABLE": ..., ...}); the cache
    is stale when one of them was recorded with another value, or when a tool it remembers (cmake,
    ninja, a compiler) no longer exists.
    """
    cache_file = build_dir / "CMakeCache.txt"
    if not cache_file.is_file():
        return None
    cached = read_cmake_cache(cache_file)
    for name, value in expected.items():
        if name in cached and cached[name] != value:
            return f"{name} changed from {cached[name]} to {value}"
    for name in CACHED_TOOL_PATHS:
        path = cached.get(name, "")
        if os.path.isabs(path) and not os.path.exists(path):
            return f"{name} {path} no longer exists"
    return None


def cmake_build_dir(cache_inputs: "dict[str, str]") -> Path:
    """The CMake build folder, ready to configure: build/cmake-pyXY, one per Python minor version.

    It is kept between builds so that `pip install -e .` recompiles only what changed, and emptied
    first when its cache is stale: made by another checkout path, interpreter or pybind11
    (cache_inputs: the -D values this build passes), or by tools that no longer exist.
    """
    build_dir = ROOT / "build" / f"cmake-py{sys.version_info[0]}{sys.version_info[1]}"
    expected = {"CMAKE_HOME_DIRECTORY": str(ROOT), "CMAKE_CACHEFILE_DIR": str(build_dir)}
    stale = stale_cmake_cache(build_dir, {**expected, **cache_inputs})
    if stale:
        print(f"vidllm_ext: {stale}: configuring {build_dir} afresh", flush=True)
        shutil.rmtree(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    return build_dir


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
        # The paths the CMake cache remembers from this environment (pip's isolated one differs
        # every time); cmake_build_dir starts afresh when they changed.
        cache_inputs = {
            "Python_EXECUTABLE": sys.executable,
            "pybind11_DIR": pybind11.get_cmake_dir(),
        }
        build_dir = cmake_build_dir(cache_inputs)
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={output_dir}",
            *(f"-D{name}={value}" for name, value in cache_inputs.items()),
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
