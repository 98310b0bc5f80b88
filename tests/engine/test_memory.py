"""The trainer's allocator setting: glibc keeps freed blocks for the next step."""
import subprocess
import sys

import pytest

from detseg.engine.memory import keep_freed_memory
from tests.conftest import script_env


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_glibc_takes_the_thresholds():
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True  # once per process, then cached


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_a_freed_block_is_reused_without_page_faults():
    """An 8 MiB block freed at the heap's top and allocated again comes back without faulting
    its 2048 pages in anew. (A trim threshold past C int's range once wrapped to 0: glibc handed
    the block back on every free and each reuse faulted 2016 of its pages.) malloc / free through
    ctypes, in a fresh process, so that nothing else on the heap decides the outcome."""
    script = (
        "import ctypes, resource\n"
        "from detseg.engine.memory import keep_freed_memory\n"
        "if not keep_freed_memory():\n"
        "    raise SystemExit(print('no glibc'))\n"
        "libc = ctypes.CDLL('libc.so.6')\n"
        "libc.malloc.restype = ctypes.c_void_p\n"
        "libc.free.argtypes = [ctypes.c_void_p]\n"
        "size = 8 * 2**20\n"
        "def cycle():\n"
        "    p = libc.malloc(size)\n"
        "    ctypes.memset(p, 1, size)\n"
        "    libc.free(p)\n"
        "cycle()\n"
        "f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(20):\n"
        "    cycle()\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 20)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env=script_env())
    assert out.returncode == 0, out.stderr
    if out.stdout.strip() == "no glibc":  # musl and other C libraries: the setting does not apply
        pytest.skip("the C library is not glibc")
    faults_per_block = float(out.stdout.split()[-1])
    assert faults_per_block < 100, f"{faults_per_block} faults per reused 8 MiB block (2048 pages)"
