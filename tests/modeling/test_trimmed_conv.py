"""TrimmedConv2d: the training forward without the padding-only taps gives nn.Conv2d's outputs
and gradients; the tap arithmetic matches counting every output's reads."""
import itertools

import pytest
import torch
from torch import nn

from detseg.modeling.backbones import build_backbone
from detseg.modeling.trimmed_conv import TrimmedConv2d, trim_padding_taps, used_taps


def _counted(size, kernel, stride, padding, dilation):
    out = (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    used = [k for k in range(kernel)
            if any(0 <= o * stride - padding + k * dilation < size for o in range(out))]
    return (used[0], used[-1]) if used else (0, kernel - 1)


def test_used_taps_match_counting_every_read():
    for size, kernel, stride, padding, dilation in itertools.product(
            range(1, 8), (1, 2, 3, 5, 7), (1, 2, 3), range(0, 5), (1, 2)):
        if size + 2 * padding < dilation * (kernel - 1) + 1:
            continue  # no output at all
        assert used_taps(size, kernel, stride, padding, dilation) == _counted(
            size, kernel, stride, padding, dilation), (size, kernel, stride, padding, dilation)


CASES = [  # (in, out, kernel, stride, padding, dilation, groups, H, W)
    (8, 6, 3, 1, 1, 1, 1, 1, 1),   # ResNet's layer4 at 32 px: the centre tap alone
    (8, 6, 3, 2, 1, 1, 1, 2, 2),   # its stride-2 entry, 2x2 to 1x1: taps 1..2
    (8, 6, 3, 1, 1, 1, 1, 1, 5),   # one axis trimmed, the other whole
    (8, 6, 5, 1, 2, 1, 1, 2, 1),   # 5x5 on 2x1
    (8, 6, 3, 1, 2, 2, 1, 1, 3),   # dilated
    (8, 8, 3, 1, 1, 1, 4, 1, 1),   # grouped
    (8, 6, 7, 2, 3, 1, 1, 3, 2),   # a stem-like 7x7 stride 2 on a tiny map
    (8, 6, 3, 1, 1, 1, 1, 4, 4),   # nothing to trim
]


@pytest.mark.parametrize("case", CASES)
def test_outputs_and_gradients_equal_conv2d(case):
    cin, cout, k, s, p, d, g, h, w = case
    torch.manual_seed(0)
    ref = nn.Conv2d(cin, cout, k, s, p, d, g).double()
    ours = nn.Conv2d(cin, cout, k, s, p, d, g).double()
    ours.load_state_dict(ref.state_dict())
    assert trim_padding_taps(ours, min_weights=0) == 1 and isinstance(ours, TrimmedConv2d)
    x = torch.randn(3, cin, h, w, dtype=torch.float64)
    xr, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
    yr, yo = ref(xr), ours(xo)
    assert yo.shape == yr.shape
    torch.testing.assert_close(yo, yr)
    g_out = torch.randn_like(yr)
    yr.backward(g_out)
    yo.backward(g_out)
    torch.testing.assert_close(xo.grad, xr.grad)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad)


def test_trims_only_in_training_with_gradients(monkeypatch):
    conv = nn.Conv2d(4, 4, 3, padding=1)
    trim_padding_taps(conv, min_weights=0)
    calls = []
    real = torch.nn.functional.conv2d
    monkeypatch.setattr(torch.nn.functional, "conv2d", lambda x, wt, *a: calls.append(wt.shape[-2:]) or real(x, wt, *a))
    x = torch.randn(1, 4, 1, 1)
    conv.train()
    conv(x)
    with torch.no_grad():
        conv(x)
    conv.eval()
    conv(x)
    # training with gradients: the centre tap; without gradients and in evaluation: the whole kernel
    assert calls == [torch.Size([1, 1]), torch.Size([3, 3]), torch.Size([3, 3])]


def test_backbone_state_dict_and_training_unchanged():
    """build_backbone trims ResNet's convolutions; its keys stay, and a training step on a 32-px
    batch gives the plain network's gradients."""
    torch.manual_seed(0)
    body = build_backbone("resnet18", out_features=["c5"])
    assert any(isinstance(m, TrimmedConv2d) for m in body.modules())
    plain = build_backbone("resnet18", out_features=["c5"])
    for m in plain.modules():
        if isinstance(m, TrimmedConv2d):
            m.__class__ = nn.Conv2d
    plain.load_state_dict(body.state_dict())
    assert list(plain.state_dict()) == list(body.state_dict())
    body, plain = body.double(), plain.double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    for net in (body, plain):
        net.train()
        net(x)["c5"].square().sum().backward()
    for (name, a), (_, b) in zip(body.named_parameters(), plain.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_autocast_bfloat16_and_channels_last():
    """Under CPU autocast the trimmed convolution runs in bfloat16 as nn.Conv2d does; gradients come
    back in the parameters' float32 and the weight's channels-last layout."""
    torch.manual_seed(0)
    ref = nn.Conv2d(16, 8, 3, padding=1).to(memory_format=torch.channels_last)
    ours = nn.Conv2d(16, 8, 3, padding=1).to(memory_format=torch.channels_last)
    ours.load_state_dict(ref.state_dict())
    trim_padding_taps(ours, min_weights=0)
    x = torch.randn(4, 16, 1, 1)
    outs = []
    for conv in (ref, ours):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = conv(x)
        outs.append(y)
        y.float().square().sum().backward()
    assert outs[1].dtype == outs[0].dtype == torch.bfloat16
    torch.testing.assert_close(outs[1], outs[0])
    assert ours.weight.grad.dtype == torch.float32
    assert ours.weight.grad.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad, rtol=2e-2, atol=2e-2)


def test_small_and_pointwise_convolutions_stay_plain():
    net = nn.Sequential(nn.Conv2d(512, 512, 3, padding=1), nn.Conv2d(32, 32, 3, padding=1),
                        nn.Conv2d(1024, 1024, 1))
    assert trim_padding_taps(net) == 1
    assert [type(m) for m in net] == [TrimmedConv2d, nn.Conv2d, nn.Conv2d]
