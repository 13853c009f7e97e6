"""Dispatch point of the similarity cross-entropy.

Every caller goes through `sim_xent`, so the fused Triton kernel (CUDA tensors, or CPU tensors under
TRITON_INTERPRET=1) plugs in here without touching the heads. Until it lands, all devices take the
pure-torch reference.
"""
import torch

from .reference import sim_xent_reference


def sim_xent(q, k, *, scale, col_bias=None, targets=None, instance_ids=None, self_mask=False,
             row_offset=0, reduction="mean"):
    """Mean (or sum/none) of -log softmax over `scale * q k^T + col_bias`; see reference.sim_xent_reference."""
    return sim_xent_reference(q, k, scale=scale, col_bias=col_bias, targets=targets,
                              instance_ids=instance_ids, self_mask=self_mask, row_offset=row_offset,
                              reduction=reduction)


def nt_xent(z, n_views: int, temperature: float):
    """SimCLR's NT-Xent for any number of views >= 2; z is (V*B, D), view-major (row r is image r mod B).

    Rows are L2-normalised in float32 (float64 kept), so the loss is computed at full precision under
    autocast.
    """
    if n_views < 2 or z.shape[0] % n_views:
        raise ValueError(f"nt_xent: {z.shape[0]} rows with n_views={n_views}: need n_views >= 2 "
                         "dividing the row count")
    z = torch.nn.functional.normalize(z if z.dtype == torch.float64 else z.float(), dim=1)
    ids = torch.arange(z.shape[0] // n_views, device=z.device).repeat(n_views)
    return sim_xent(z, z, scale=1.0 / temperature, instance_ids=ids, self_mask=True)
