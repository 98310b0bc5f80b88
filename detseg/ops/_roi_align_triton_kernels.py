"""Triton RoIAlign kernels (forward and backward) over ``_geometry.sample_table``'s table.

Imported only when a CUDA tensor (or ``TRITON_INTERPRET=1``) needs them: ``roi_align_triton``
loads this module lazily, so importing detseg needs no Triton. Module level, because Triton
resolves the helpers a kernel calls through the kernel's globals.
"""
import triton
import triton.language as tl


@triton.jit
def bin_of(pid, batch_ptr, grid_ptr, PH, PW):
    """Program ``pid``'s output bin: (RoI k, row ph, column pw, image n, grid_h, grid_w)."""
    k = pid // (PH * PW)
    n = tl.load(batch_ptr + k)
    return k, (pid // PW) % PH, pid % PW, n, tl.load(grid_ptr + 2 * k), tl.load(grid_ptr + 2 * k + 1)


@triton.jit
def channel_block(batch_ptr, grid_ptr, PH, PW, C, BLOCK_C: tl.constexpr):
    """This program's bin (``bin_of``) and block of channels: (k, ph, pw, n, gh, gw, offsets,
    their mask)."""
    k, ph, pw, n, gh, gw = bin_of(tl.program_id(0), batch_ptr, grid_ptr, PH, PW)
    offs = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    return k, ph, pw, n, gh, gw, offs, offs < C


@triton.jit
def sample(yi_ptr, yw_ptr, xi_ptr, xw_ptr, k, ph, pw, iy, ix, PH, PW, SY, SX):
    """Sample (iy, ix) of a bin from the table: (valid, lo_y, hi_y, lo_x, hi_x, the weights
    h_y, l_y, h_x, l_x); a dropped sample's lo (-1) is clamped to 0 and masked by ``valid``."""
    ye = ((k * PH + ph) * SY + iy) * 2
    xe = ((k * PW + pw) * SX + ix) * 2
    ylo = tl.load(yi_ptr + ye)
    xlo = tl.load(xi_ptr + xe)
    return ((ylo >= 0) & (xlo >= 0), tl.maximum(ylo, 0), tl.load(yi_ptr + ye + 1),
            tl.maximum(xlo, 0), tl.load(xi_ptr + xe + 1), tl.load(yw_ptr + ye),
            tl.load(yw_ptr + ye + 1), tl.load(xw_ptr + xe), tl.load(xw_ptr + xe + 1))


@triton.jit
def forward(in_ptr, batch_ptr, yi_ptr, yw_ptr, xi_ptr, xw_ptr, grid_ptr, out_ptr,
            C, H, W, PH, PW, SY, SX, BLOCK_C: tl.constexpr):
    # One program: one output bin and a block of channels of the channels-last map.
    k, ph, pw, n, gh, gw, offs, cmask = channel_block(batch_ptr, grid_ptr, PH, PW, C, BLOCK_C)
    acc = tl.zeros([BLOCK_C], yw_ptr.dtype.element_ty)
    for iy in range(0, gh):
        for ix in range(0, gw):
            ok, yl, yh, xl, xh, hy, ly, hx, lx = sample(yi_ptr, yw_ptr, xi_ptr, xw_ptr, k, ph, pw,
                                                        iy, ix, PH, PW, SY, SX)
            m = cmask & ok
            row_lo = (n * H + yl) * W
            row_hi = (n * H + yh) * W
            v1 = tl.load(in_ptr + (row_lo + xl) * C + offs, mask=m, other=0.0)
            v2 = tl.load(in_ptr + (row_lo + xh) * C + offs, mask=m, other=0.0)
            v3 = tl.load(in_ptr + (row_hi + xl) * C + offs, mask=m, other=0.0)
            v4 = tl.load(in_ptr + (row_hi + xh) * C + offs, mask=m, other=0.0)
            acc += (hy * hx) * v1 + (hy * lx) * v2 + (ly * hx) * v3 + (ly * lx) * v4
    count = tl.maximum(gh * gw, 1).to(acc.dtype)
    tl.store(out_ptr + (k * C + offs) * (PH * PW) + ph * PW + pw, acc / count, mask=cmask)


@triton.jit
def backward(grad_ptr, batch_ptr, yi_ptr, yw_ptr, xi_ptr, xw_ptr, grid_ptr, gin_ptr,
             C, H, W, PH, PW, SY, SX, BLOCK_C: tl.constexpr):
    k, ph, pw, n, gh, gw, offs, cmask = channel_block(batch_ptr, grid_ptr, PH, PW, C, BLOCK_C)
    g = tl.load(grad_ptr + (k * C + offs) * (PH * PW) + ph * PW + pw, mask=cmask, other=0.0)
    g = g / tl.maximum(gh * gw, 1).to(g.dtype)
    plane = (n * C + offs) * (H * W)
    for iy in range(0, gh):
        for ix in range(0, gw):
            ok, yl, yh, xl, xh, hy, ly, hx, lx = sample(yi_ptr, yw_ptr, xi_ptr, xw_ptr, k, ph, pw,
                                                        iy, ix, PH, PW, SY, SX)
            m = cmask & ok
            tl.atomic_add(gin_ptr + plane + yl * W + xl, g * (hy * hx), mask=m)
            tl.atomic_add(gin_ptr + plane + yl * W + xh, g * (hy * lx), mask=m)
            tl.atomic_add(gin_ptr + plane + yh * W + xl, g * (ly * hx), mask=m)
            tl.atomic_add(gin_ptr + plane + yh * W + xh, g * (ly * lx), mask=m)
