"""The installed module: build facts, linkage, device errors, the CLI."""

import ctypes
import shutil
import subprocess
import sys

import pytest
import torch

import vidllm_ext
from vidllm_ext import _C


def test_build_info_reports_the_build():
    info = vidllm_ext.build_info()
    assert set(info) == {
        "version",
        "git_commit",
        "cuda_compiled",
        "cuda_archs",
        "cuda_runtime_version",
        "device_count",
        "openmp",
        "cuda_emulation",
    }
    assert info["version"] == vidllm_ext.__version__
    assert isinstance(info["device_count"], int) and info["device_count"] >= 0
    assert bool(info["cuda_archs"]) == info["cuda_compiled"]
    assert (info["cuda_runtime_version"] is None) == (not info["cuda_compiled"])


@pytest.mark.skipif(shutil.which("readelf") is None, reason="needs readelf")
def test_module_links_neither_torch_nor_dynamic_cudart():
    dynamic = subprocess.run(["readelf", "-d", _C.__file__], capture_output=True, text=True).stdout
    needed = [line.split("[")[1].rstrip("]") for line in dynamic.splitlines() if "(NEEDED)" in line]
    assert needed, "readelf found no dependencies at all"
    for library in needed:
        assert not library.startswith(("libtorch", "libc10", "libcudart", "libpython")), library


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLManagedTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", _DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", _DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
        ("manager_ctx", ctypes.c_void_p),
        ("deleter", ctypes.c_void_p),
    ]


def fake_cuda_capsule(keepalive, shape):
    """A DLPack capsule that claims to hold a float32 CUDA tensor (its pointer is never read)."""
    dims = (ctypes.c_int64 * len(shape))(*shape)
    tensor = _DLManagedTensor(
        data=0x1000,
        device=_DLDevice(2, 0),
        ndim=len(shape),
        dtype=_DLDataType(2, 32, 1),
        shape=dims,
    )
    keepalive += [dims, tensor]
    new_capsule = ctypes.pythonapi.PyCapsule_New
    new_capsule.restype = ctypes.py_object
    new_capsule.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    return new_capsule(ctypes.addressof(tensor), b"dltensor", None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a real GPU would accept the fake tensor")
def test_cuda_tensor_without_usable_kernels_names_the_compiled_archs():
    keepalive = []
    frames = fake_cuda_capsule(keepalive, (2, 3, 4))
    scores = fake_cuda_capsule(keepalive, (2, 3))
    with pytest.raises(RuntimeError, match="compiled CUDA archs"):
        _C.frame_drop_score(frames, None, scores, "feature")


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "vidllm_ext", *args], capture_output=True, text=True, timeout=300
    )


def test_cli_info_prints_build_info():
    result = run_cli("info")
    assert result.returncode == 0, result.stderr
    assert "cuda_compiled" in result.stdout and vidllm_ext.__version__ in result.stdout


def test_cli_demo_compares_unpatched_and_dtd():
    pytest.importorskip("transformers")
    result = run_cli("demo", "--new-tokens", "2", "--strip", "")
    assert result.returncode == 0, result.stderr
    for row in ("video tokens", "prefill ms", "KV-cache KiB", "Q1 answer", "per-step drop ratio"):
        assert row in result.stdout
    assert "scene changes (lowest drop ratio, top 10%): steps [6]" in result.stdout  # the cut


def test_cli_rejects_unknown_command():
    result = run_cli("frobnicate")
    assert result.returncode != 0 and "invalid choice" in result.stderr


@pytest.fixture
def setup_script(monkeypatch):
    """setup.py's functions, loaded without running setup()."""
    import runpy
    from pathlib import Path

    import setuptools

    path = Path(__file__).resolve().parent.parent / "setup.py"
    if not path.exists():
        pytest.skip("needs the source tree's setup.py")
    monkeypatch.setattr(setuptools, "setup", lambda **kwargs: None)
    return runpy.run_path(str(path))


def test_setup_cuda_knob(setup_script, monkeypatch):
    monkeypatch.setitem(setup_script["cuda_setting"].__globals__, "find_nvcc", lambda: None)
    monkeypatch.setenv("VIDLLM_CUDA", "1")
    with pytest.raises(RuntimeError, match="VIDLLM_CUDA=1 but no CUDA compiler was found"):
        setup_script["cuda_setting"]()
    monkeypatch.setenv("VIDLLM_CUDA", "auto")
    assert setup_script["cuda_setting"]() == (False, None)
    monkeypatch.setenv("VIDLLM_CUDA", "0")
    assert setup_script["cuda_setting"]() == (False, None)
    monkeypatch.setenv("VIDLLM_CUDA", "yes")
    with pytest.raises(RuntimeError, match="VIDLLM_CUDA must be auto, 0 or 1"):
        setup_script["cuda_setting"]()


def test_setup_arch_list(setup_script):
    archs = setup_script["cmake_cuda_archs"]
    assert archs("80;90") == "80-real;90"
    assert archs("90,80,86") == "80-real;86-real;90"
    with pytest.raises(RuntimeError, match="VIDLLM_CUDA_ARCHS must look like"):
        archs("sm_90")


def write_cmake_cache(build_dir, **entries):
    build_dir.mkdir(parents=True, exist_ok=True)
    lines = ["# This is the CMakeCache file.", "//Program used to build from build.ninja files."]
    lines += [f"{name}:FILEPATH={value}" for name, value in entries.items()]
    (build_dir / "CMakeCache.txt").write_text("\n".join(lines) + "\n")


def test_setup_detects_a_stale_cmake_cache(setup_script, tmp_path):
    stale = setup_script["stale_cmake_cache"]
    assert stale(tmp_path, {"Python_EXECUTABLE": sys.executable}) is None  # no cache yet
    tools = {"CMAKE_COMMAND": sys.executable, "CMAKE_MAKE_PROGRAM": sys.executable}
    write_cmake_cache(tmp_path, Python_EXECUTABLE=sys.executable, **tools)
    assert stale(tmp_path, {"Python_EXECUTABLE": sys.executable}) is None
    assert "Python_EXECUTABLE changed" in stale(tmp_path, {"Python_EXECUTABLE": "/other/python"})
    # Issue 14: pip deleted the isolated build environment whose ninja the cache remembers.
    gone = "/tmp/pip-build-env-3ce37sjp/overlay/bin/ninja"
    write_cmake_cache(tmp_path, Python_EXECUTABLE=sys.executable, CMAKE_MAKE_PROGRAM=gone)
    reason = stale(tmp_path, {"Python_EXECUTABLE": sys.executable})
    assert reason == f"CMAKE_MAKE_PROGRAM {gone} no longer exists"


def test_setup_build_folder_is_emptied_only_when_stale(setup_script, tmp_path, monkeypatch):
    monkeypatch.setitem(setup_script["cmake_build_dir"].__globals__, "ROOT", tmp_path)
    build_dir = tmp_path / "build" / f"cmake-py{sys.version_info[0]}{sys.version_info[1]}"
    home = {"CMAKE_HOME_DIRECTORY": str(tmp_path), "CMAKE_CACHEFILE_DIR": str(build_dir)}
    write_cmake_cache(build_dir, Python_EXECUTABLE=sys.executable, **home)
    (build_dir / "object.o").touch()
    assert setup_script["cmake_build_dir"]({"Python_EXECUTABLE": sys.executable}) == build_dir
    assert (build_dir / "object.o").exists()  # kept: incremental rebuilds
    setup_script["cmake_build_dir"]({"Python_EXECUTABLE": "/another/venv/bin/python"})
    assert build_dir.is_dir() and not any(build_dir.iterdir())


def test_end_to_end_benchmark_script_smoke_run():
    pytest.importorskip("transformers")
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "e2e_frame_drop.py"
    if not script.exists():
        pytest.skip("needs the source tree's benchmarks/")
    result = subprocess.run(
        [sys.executable, str(script), "--tiny", "--steps", "4", "--repeats", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "| 4 | 256 |" in result.stdout and "target >= 1.76x lower TTFT" in result.stdout
