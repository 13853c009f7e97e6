"""Heads turn the embeddings of a task into a scalar loss; one contract for all of them."""
import torch

from fastssl.config import HEADS, MethodConfig

from .byol import BYOLHead
from .contrastive import ContrastiveHead
from .protonet import ProtoNetHead
from .r2d2 import R2D2Head
from .svm import SVMHead


def build_head(method: MethodConfig, embed_dim: int | None = None, operand_dtype: torch.dtype = torch.float32):
    """The head `method.head` names; byol needs `embed_dim`, the projector's output width;
    `operand_dtype` is what the similarity-loss heads feed the fused kernel (engine.precision)."""
    if method.head == "contrastive":
        return ContrastiveHead(method.temperature, impl=method.loss_impl, operand_dtype=operand_dtype)
    if method.head == "protonet":
        return ProtoNetHead(method.temperature, impl=method.loss_impl, operand_dtype=operand_dtype)
    if method.head == "r2d2":
        return R2D2Head(method.temperature, method.ridge_lambda, impl=method.loss_impl)
    if method.head == "svm":
        return SVMHead(method.temperature, method.svm_c, method.svm_iters, method.svm_tasks)
    if method.head == "byol":
        if embed_dim is None:
            raise ValueError("method.head=byol: build_head needs embed_dim (model.projector_out)")
        return BYOLHead(embed_dim, method.predictor_hidden)
    raise ValueError(f"method.head={method.head!r}: must be one of {', '.join(HEADS)}")
