"""RoIAlign exported to ONNX (its RoiAlign operator) gives detseg's result in onnxruntime."""
import numpy as np
import pytest
import torch

from detseg.ops import RoIAlign

ort = pytest.importorskip("onnxruntime")  # in the [dev] extras: CI runs this
from detseg.ops.onnx import export_onnx  # noqa: E402


class Head(torch.nn.Module):
    """A conv then RoIAlign, as a detector's box head starts."""

    def __init__(self, aligned, ratio):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.pool = RoIAlign((7, 5), 0.25, ratio, aligned)

    def forward(self, x, rois):
        return self.pool(self.conv(x), rois)


@pytest.mark.parametrize("aligned,ratio", [(False, 2), (True, -1)])
def test_onnx_runtime_reproduces_roi_align(tmp_path, aligned, ratio):
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = Head(aligned, ratio).eval()
    x = torch.randn(2, 3, 20, 24, generator=g)
    xy = torch.rand(15, 2, generator=g) * 70
    rois = torch.cat([torch.randint(0, 2, (15, 1), generator=g).float(), xy,
                      xy + torch.rand(15, 2, generator=g) * 40 + 1], 1)
    path = str(tmp_path / "head.onnx")
    export_onnx(net, (x, rois), path, dynamic_shapes=(None, {0: torch.export.Dim("rois")}))
    import onnx
    assert "RoiAlign" in {n.op_type for n in onnx.load(path).graph.node}
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    # a different number of RoIs than at export: the RoI axis is not baked in
    rois2 = rois[:9]
    for r in (rois, rois2):
        out = sess.run(None, {names[0]: x.numpy(), names[1]: r.numpy()})[0]
        with torch.no_grad():
            ref = net(x, r).numpy()
        np.testing.assert_allclose(out, ref, rtol=0, atol=1e-5)
