"""The `augment` kernel family: per-image colour augmentation fused into one pass.

From a batch already at its output size (uint8 NHWC from a decoder, or the crop's float output) to
the normalised channels_last view in fp32, fp16 or bf16: flip, colour jitter (brightness, contrast,
saturation, hue in a per-batch order), grayscale, solarize, (x - mean) / std. Each image has its own
row of parameters (kernels.reference.AUGMENT_COLUMNS), drawn on the host from a seeded generator.

The op order is a runtime argument (its ops as base-4 digits, and their count): the kernel branches
on each op, a branch every thread of a program takes alike, so the compiled variants are the same
for all 65 orders and are compiled once, not inside the loaders' and trainer's timed windows.

Contrast blends with the image's mean luma after the ops before it, a reduction over the whole image.
An image of at most ONE_PASS_MAX pixels (CIFAR's 32 x 32, 64 x 64 views) is one program's block: it
is loaded once, the mean is taken in registers where contrast comes, and written once, the
bandwidth floor (input + output bytes). A larger image is split across programs (image, slice of its
pixels), enough to fill the GPU whatever the batch size: a first kernel writes per-slice partial
sums of the luma (only for jittered images, only when contrast is on), the main kernel adds its
image's partials in a fixed order (deterministic, no atomics); with contrast on, its input is read
twice. The two stages (`colour`, `finish`) can run apart so that a spatial op (blur) sits between
them. There is no backward: augmentation acts on data, not on parameters.
"""
from __future__ import annotations

import torch

from .reference import AUGMENT_COLUMNS, COLOR_OPS, colour_augment_reference
from .runtime import HAVE_TRITON, use_triton

if HAVE_TRITON:
    import triton
    import triton.language as tl

OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BLOCK = 1024                 # pixels per loop step of a program of a split image (4 warps)
# One pass holds the whole image in registers: 4 pixels a thread (at 8, sm_90 spills), so the largest
# image is a program of 32 warps (the most a program has) x 32 threads x 4 pixels = 64 x 64.
PIXELS_PER_THREAD = 4
ONE_PASS_MAX = 32 * 32 * PIXELS_PER_THREAD
PROGRAMS_PER_SM = 8          # target grid size: enough resident programs to keep HBM busy
CONTRAST = COLOR_OPS.index("contrast")

if HAVE_TRITON:
    @triton.jit
    def _luma(r, g, b):
        return 0.299 * r + 0.587 * g + 0.114 * b

    @triton.jit
    def _blend(x, other, f):
        return tl.minimum(tl.maximum(f * x + (1 - f) * other, 0.0), 1.0)

    @triton.jit
    def _hue_channel(value, chroma, hue6, offset: tl.constexpr):
        k = hue6 + offset
        k = k - 6.0 * tl.floor(k / 6.0)
        return value - chroma * tl.minimum(tl.maximum(tl.minimum(k, 4.0 - k), 0.0), 1.0)

    @triton.jit
    def _colour_ops(r, g, b, mask, order, count, bright, contrast, sat, hue, parts, hw,
                    SPLIT: tl.constexpr, ONE_PASS: tl.constexpr):
        """The first `count` ops of `order` (indices into COLOR_OPS as base-4 digits, the first lowest) on
        [0, 1] pixels. Contrast's mean luma: over the block's pixels where ONE_PASS (the block is the
        whole image), else from the image's SPLIT partial sums at `parts`."""
        for i in range(count):
            op = (order >> (2 * i)) & 3
            if op == 0:
                r = tl.minimum(tl.maximum(r * bright, 0.0), 1.0)
                g = tl.minimum(tl.maximum(g * bright, 0.0), 1.0)
                b = tl.minimum(tl.maximum(b * bright, 0.0), 1.0)
            elif op == 1:
                if ONE_PASS:
                    mean_luma = tl.sum(tl.where(mask, _luma(r, g, b), 0.0), 0) / hw
                else:
                    mean_luma = tl.sum(tl.load(parts + tl.arange(0, SPLIT)), 0) / hw
                r, g, b = _blend(r, mean_luma, contrast), _blend(g, mean_luma, contrast), _blend(b, mean_luma, contrast)
            elif op == 2:
                y = _luma(r, g, b)
                r, g, b = _blend(r, y, sat), _blend(g, y, sat), _blend(b, y, sat)
            else:
                value = tl.maximum(tl.maximum(r, g), b)
                chroma = value - tl.minimum(tl.minimum(r, g), b)
                divisor = tl.where(chroma > 0, chroma, 1.0)
                hue6 = tl.where(value == r, (g - b) / divisor,
                                tl.where(value == g, (b - r) / divisor + 2.0, (r - g) / divisor + 4.0))
                hue6 = hue6 + 6.0 * hue
                r = _hue_channel(value, chroma, hue6, 5.0)
                g = _hue_channel(value, chroma, hue6, 3.0)
                b = _hue_channel(value, chroma, hue6, 1.0)
        return r, g, b

    @triton.jit
    def _load_params(p_ptr, image):
        """Image `image`'s row of AUGMENT_COLUMNS: flags as booleans, factors as floats."""
        row = p_ptr + image * 8
        return (tl.load(row) > 0.5, tl.load(row + 1) > 0.5, tl.load(row + 2), tl.load(row + 3),
                tl.load(row + 4), tl.load(row + 5), tl.load(row + 6) > 0.5, tl.load(row + 7) > 0.5)

    @triton.jit
    def _load_rgb(x_img, offs, mask, width, sxc, sxh, sxw, flip, value_range, COLOUR: tl.constexpr):
        """Pixels offs (row-major over H x W) of one image as float32 / value_range; flipped and
        clamped to [0, 1] in the colour stage."""
        row = offs // width
        col = offs % width
        if COLOUR:
            col = tl.where(flip, width - 1 - col, col)
        ptr = x_img + row.to(tl.int64) * sxh + col.to(tl.int64) * sxw
        r = tl.load(ptr, mask=mask, other=0).to(tl.float32) / value_range
        g = tl.load(ptr + sxc, mask=mask, other=0).to(tl.float32) / value_range
        b = tl.load(ptr + 2 * sxc, mask=mask, other=0).to(tl.float32) / value_range
        if COLOUR:
            r = tl.minimum(tl.maximum(r, 0.0), 1.0)
            g = tl.minimum(tl.maximum(g, 0.0), 1.0)
            b = tl.minimum(tl.maximum(b, 0.0), 1.0)
        return r, g, b

    # The order's integers are not specialised: Triton would compile a 1 as a constant and a 0 as a
    # multiple of 16, a variant per order again.
    @triton.jit(do_not_specialize=["order", "cpos"])
    def _luma_partials_kernel(x_ptr, p_ptr, part_ptr, hw, width, per_program, sxb, sxc, sxh, sxw, value_range,
                              order, cpos, SPLIT: tl.constexpr, BLOCK: tl.constexpr):
        """part[image, slice] = sum of luma over the slice after the `cpos` ops before contrast (0 when
        the image is not jittered: its contrast is never applied)."""
        image = tl.program_id(0)
        piece = tl.program_id(1)
        flip, jitter, bright, contrast, sat, hue, gray, sol = _load_params(p_ptr, image)
        x_img = x_ptr + image.to(tl.int64) * sxb
        acc = tl.zeros((BLOCK,), tl.float32)
        if jitter:
            end = tl.minimum((piece + 1) * per_program, hw)
            for base in range(piece * per_program, end, BLOCK):
                offs = base + tl.arange(0, BLOCK)
                mask = offs < end
                r, g, b = _load_rgb(x_img, offs, mask, width, sxc, sxh, sxw, flip, value_range, True)
                r, g, b = _colour_ops(r, g, b, mask, order, cpos, bright, contrast, sat, hue, part_ptr, hw,
                                      SPLIT, False)
                acc += tl.where(mask, _luma(r, g, b), 0.0)
        tl.store(part_ptr + image * SPLIT + piece, tl.sum(acc, 0))

    @triton.jit(do_not_specialize=["order", "count"])
    def _augment_kernel(x_ptr, p_ptr, part_ptr, out_ptr, hw, width, per_program, sxb, sxc, sxh, sxw,
                        sob, soc, soh, sow, value_range, threshold, mean0, mean1, mean2, std0, std1, std2,
                        order, count, COLOUR: tl.constexpr, FINISH: tl.constexpr, ONE_PASS: tl.constexpr,
                        SPLIT: tl.constexpr, BLOCK: tl.constexpr):
        """Program (image, slice) of per_program pixels; ONE_PASS: one slice, one block, the image."""
        image = tl.program_id(0)
        piece = tl.program_id(1)
        flip, jitter, bright, contrast, sat, hue, gray, sol = _load_params(p_ptr, image)
        x_img = x_ptr + image.to(tl.int64) * sxb
        o_img = out_ptr + image.to(tl.int64) * sob
        end = tl.minimum((piece + 1) * per_program, hw)
        for base in range(piece * per_program, end, BLOCK):
            offs = base + tl.arange(0, BLOCK)
            mask = offs < end
            r, g, b = _load_rgb(x_img, offs, mask, width, sxc, sxh, sxw, flip, value_range, COLOUR)
            if COLOUR:
                if jitter:
                    r, g, b = _colour_ops(r, g, b, mask, order, count, bright, contrast, sat, hue,
                                          part_ptr + image * SPLIT, hw, SPLIT, ONE_PASS)
                if gray:
                    y = _luma(r, g, b)
                    r, g, b = y, y, y
            if FINISH:
                if sol:
                    r = tl.where(r >= threshold, 1.0 - r, r)
                    g = tl.where(g >= threshold, 1.0 - g, g)
                    b = tl.where(b >= threshold, 1.0 - b, b)
                r = (r - mean0) / std0
                g = (g - mean1) / std1
                b = (b - mean2) / std2
            row = offs // width
            col = offs % width
            ptr = o_img + row.to(tl.int64) * soh + col.to(tl.int64) * sow
            tl.store(ptr, r.to(out_ptr.dtype.element_ty), mask=mask)
            tl.store(ptr + soc, g.to(out_ptr.dtype.element_ty), mask=mask)
            tl.store(ptr + 2 * soc, b.to(out_ptr.dtype.element_ty), mask=mask)


def _check(images: torch.Tensor, params: torch.Tensor, order, out_dtype: torch.dtype, colour: bool,
           finish: bool) -> None:
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"colour_augment: images must be (B,3,H,W) (any strides), got {tuple(images.shape)}")
    if params.shape != (images.shape[0], len(AUGMENT_COLUMNS)):
        raise ValueError(f"colour_augment: params must be (B, {len(AUGMENT_COLUMNS)}) = "
                         f"{(images.shape[0], len(AUGMENT_COLUMNS))} (columns {', '.join(AUGMENT_COLUMNS)}), "
                         f"got {tuple(params.shape)}")
    if len(set(order)) != len(order) or not all(0 <= op < len(COLOR_OPS) for op in order):
        raise ValueError(f"colour_augment: order={tuple(order)}: distinct indices into {COLOR_OPS}")
    if out_dtype not in OUT_DTYPES:
        raise ValueError(f"colour_augment: out_dtype={out_dtype}: must be one of {OUT_DTYPES}")
    if not (colour or finish):
        raise ValueError("colour_augment: colour=False and finish=False leaves nothing to do")


def _grid(batch: int, hw: int, device: torch.device) -> tuple[int, int]:
    """(slices per image, pixels per slice): about PROGRAMS_PER_SM programs per SM in all, whole BLOCKs."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    blocks = triton.cdiv(hw, BLOCK)
    split = min(blocks, max(1, triton.cdiv(PROGRAMS_PER_SM * sms, batch)))
    split = triton.next_power_of_2(split)      # tl.arange over the partials needs a power of two
    per_program = triton.cdiv(blocks, split) * BLOCK
    return triton.cdiv(hw, per_program), per_program


def colour_augment(images: torch.Tensor, params: torch.Tensor, *, order=(), mean=(0.0, 0.0, 0.0),
                   std=(1.0, 1.0, 1.0), value_range: float = 1.0, solarize_threshold: float = 0.5,
                   colour: bool = True, finish: bool = True, out_dtype: torch.dtype = torch.float32,
                   impl: str = "auto") -> torch.Tensor:
    """See kernels.reference.colour_augment_reference for the exact semantics; this is its fused form.

    images (B,3,H,W), any dtype and strides (a permuted uint8 NHWC batch reads in place), values in
    [0, value_range]; params (B, 8) float32 on the same device. Returns (B,3,H,W) channels_last,
    out_dtype after the finish stage, float32 [0, 1] after the colour stage alone.
    """
    order = tuple(order)
    _check(images, params, order, out_dtype, colour, finish)
    kwargs = dict(order=order, mean=tuple(mean), std=tuple(std), value_range=value_range,
                  solarize_threshold=solarize_threshold, colour=colour, finish=finish)
    if not use_triton("colour_augment", images, impl):
        return colour_augment_reference(images, params, out_dtype=out_dtype if finish else torch.float32, **kwargs)
    batch, _, height, width = images.shape
    hw = height * width
    out = torch.empty((batch, 3, height, width), dtype=out_dtype if finish else torch.float32,
                      device=images.device, memory_format=torch.channels_last)
    if batch == 0 or hw == 0:
        return out
    params = params.float().contiguous()
    ops = order if colour else ()
    code = sum(op << 2 * i for i, op in enumerate(ops))
    scalars = (float(value_range), float(solarize_threshold), *map(float, mean), *map(float, std), code, len(ops))
    if hw <= ONE_PASS_MAX:                     # no partials: params stands in for their pointer
        block = max(BLOCK, triton.next_power_of_2(hw))
        _augment_kernel[(batch, 1)](images, params, params, out, hw, width, hw, *images.stride(), *out.stride(),
                                    *scalars, colour, finish, True, 1, block,
                                    num_warps=block // (32 * PIXELS_PER_THREAD))
        return out
    slices, per_program = _grid(batch, hw, images.device)
    split = triton.next_power_of_2(slices)
    # Without contrast the kernel never reads the partials: no buffer, no memset launch.
    partials = params
    if CONTRAST in ops:
        partials = torch.zeros(batch, split, dtype=torch.float32, device=images.device)
        _luma_partials_kernel[(batch, slices)](images, params, partials, hw, width, per_program, *images.stride(),
                                               float(value_range), code, ops.index(CONTRAST), split, BLOCK)
    _augment_kernel[(batch, slices)](images, params, partials, out, hw, width, per_program, *images.stride(),
                                     *out.stride(), *scalars, colour, finish, False, split, BLOCK)
    return out
