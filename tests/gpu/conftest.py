"""GPU tests: collected by the normal pytest command, skipped where torch sees no CUDA device."""
import pytest
import torch

CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "tests/gpu/" in item.nodeid.replace("\\", "/"):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def detseg_cuda_kernels(request):
    """The GPU tests check detseg's own CUDA kernels (the library hands roi_pool / roi_align to
    torchvision's on CUDA by default); a test marked ``default_cuda_kernels`` keeps the default."""
    from detseg.ops import _ext
    saved = dict(_ext._cuda_kernels)
    if "default_cuda_kernels" not in request.keywords:
        _ext.set_cuda_kernels("detseg")
    yield
    _ext._cuda_kernels.clear()
    _ext._cuda_kernels.update(saved)
