"""JIT build and load of the C++ CPU kernel, cached; one warning and ``None`` if it can't be had."""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import time
import warnings

import torch

logger = logging.getLogger(__name__)
_SOURCES = [os.path.join(os.path.dirname(__file__), "csrc", name)
            for name in ("bin_max_pool.cpp", "roi_align.cpp", "bin_table.cpp", "sample_table.cpp",
                         "buffer_cache.cpp",
                         "bindings.cpp")]


def cpu_flags() -> list[str]:
    """This CPU's instruction-set flags (``/proc/cpuinfo``'s ``flags``, Linux; elsewhere the
    processor's name), sorted."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):  # x86 / ARM
                    return sorted(set(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return [platform.machine(), platform.processor()]


def isa_tag(flags: list[str], machine: str = platform.machine()) -> str:
    """A short key of the instruction sets a ``-march=native`` build may use: the binary is built
    for this CPU, and a cache shared by machines with other CPUs (a home folder on a cluster)
    must never hand it to one that lacks an instruction (an illegal-instruction crash with no
    message)."""
    digest = hashlib.sha256(" ".join([machine, *sorted(set(flags))]).encode()).hexdigest()[:12]
    return f"{machine}_{digest}"


def _build_dir() -> str:
    """``$DETSEG_EXT_CACHE`` (a build shared by processes with different data caches), else
    ``<cache>/extensions``; one folder per torch version and CPU instruction set."""
    from ..utils import default_cache_dir
    tag = torch.__version__.replace("+", "_").replace(".", "_")
    root = os.environ.get("DETSEG_EXT_CACHE") or os.path.join(default_cache_dir(), "extensions")
    path = os.path.join(root, f"torch_{tag}", isa_tag(cpu_flags()))
    os.makedirs(path, exist_ok=True)
    return path


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype kernels compute in: float32 / float64 as they are, float16 / bfloat16 in float32."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def backend(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> str:
    """Which kernel runs for tensors of this device and dtype: "triton", "cpp" or "reference".

    Off the GPU, float16 / bfloat16 are computed in float32, so they take the float32 kernel.
    """
    kind = torch.device(device).type
    if kind == "cuda":
        return "triton"
    if kind == "cpu" and load_extension() is not None:
        return "cpp"
    return "reference"


# Which kernels run RoI pooling and RoIAlign on CUDA. torchvision's, until a GPU check measures
# detseg's Triton kernels ahead of them: on an H200 they ran at 0.1-0.4x torchvision's
# (BENCHMARKS.md, "On a GPU"), mostly host work per call. Both give the same results (the ops'
# tests). SPP pooling, which torchvision lacks, always runs detseg's.
CUDA_KERNELS = ("torchvision", "detseg")
_cuda_kernels: dict[str, str] = {}


def set_cuda_kernels(choice: str, ops: tuple[str, ...] = ("roi_pool", "roi_align")) -> None:
    """Choose the CUDA kernels of ``ops`` (``roi_pool``, ``roi_align``): ``"torchvision"`` (the
    default, faster today) or ``"detseg"`` (the Triton kernels). The environment variable
    ``DETSEG_CUDA_KERNELS`` sets the default for every op."""
    if choice not in CUDA_KERNELS:
        raise ValueError(f"CUDA kernels must be one of {CUDA_KERNELS}, got {choice!r}")
    for op in ops:
        if op not in ("roi_pool", "roi_align"):
            raise ValueError(f"set_cuda_kernels: unknown op {op!r} (roi_pool or roi_align)")
        _cuda_kernels[op] = choice


def cuda_kernels(op: str) -> str:
    """``"torchvision"`` or ``"detseg"``: whose kernel ``op`` runs on CUDA tensors."""
    if op in _cuda_kernels:
        return _cuda_kernels[op]
    choice = os.environ.get("DETSEG_CUDA_KERNELS", "torchvision")
    if choice not in CUDA_KERNELS:
        raise ValueError(f"DETSEG_CUDA_KERNELS must be one of {CUDA_KERNELS}, got {choice!r}")
    return choice


def runs_torchvision(input: torch.Tensor, op: str) -> bool:
    """Whether ``op`` on ``input`` hands over to torchvision's kernel: CUDA tensors, eager or
    ``torch.compile`` (an export keeps detseg's ops, which the exported graph is built from)."""
    return input.is_cuda and cuda_kernels(op) == "torchvision" and not torch.compiler.is_exporting()


def release_cpu_cache() -> int:
    """Free the memory the C++ kernels keep for reuse; the bytes freed (0 without the kernels).

    The kernels take their large outputs (32 MiB and up: pooled RoIs, gradients, which glibc
    would map fresh and unmap again on every call) from a small cache of blocks, at most 8 blocks
    and 1 GiB, that a freed output returns to instead of to the OS, so that a training loop
    reuses memory that is already mapped rather than page-faulting fresh memory on every call.
    This hands those blocks back, like ``torch.cuda.empty_cache``.
    """
    ext = load_extension()
    return int(ext.release_cached_buffers()) if ext is not None else 0


@functools.lru_cache(maxsize=None)
def load_extension():
    """The compiled module, or None when ``DETSEG_NO_EXT=1`` or the build fails."""
    if os.environ.get("DETSEG_NO_EXT", "") not in ("", "0"):
        return None
    try:
        # Importing cpp_extension on a machine with the CUDA toolkit but no GPU logs "No CUDA
        # runtime is found, using CUDA_HOME=...", which reads like an error; this build is CPU only.
        from ..utils import quiet_loggers
        with quiet_loggers("torch.utils.cpp_extension"):
            from torch.utils.cpp_extension import load
        build_dir = _build_dir()
        fresh = not any(f.endswith((".so", ".pyd")) for f in os.listdir(build_dir))
        if fresh:
            logger.info("detseg: building the C++ CPU kernels once for this torch and CPU (about a "
                        "minute) into %s", build_dir)
        start = time.perf_counter()
        module = load(
            name="detseg_cpu_ops",
            sources=_SOURCES,
            # -fopenmp: at::parallel_for only runs in parallel when compiled with OpenMP.
            # -ffp-contract=off: no fused multiply-adds, so RoIAlign rounds as torchvision does.
            extra_cflags=["-O3", "-march=native", "-fopenmp", "-ffp-contract=off"],
            extra_ldflags=["-fopenmp"],
            build_directory=build_dir,
            verbose=False,
        )
        if fresh:
            logger.info("detseg: C++ CPU kernels built in %.0f s", time.perf_counter() - start)
        return module
    except Exception as e:  # any compiler / toolchain failure falls back to the reference
        warnings.warn(f"detseg: C++ RoI pooling kernel could not be built ({type(e).__name__}: "
                      f"{str(e).strip().splitlines()[-1] if str(e).strip() else e}); "
                      f"using the pure-PyTorch reference (slower)", RuntimeWarning, stacklevel=2)
        return None
