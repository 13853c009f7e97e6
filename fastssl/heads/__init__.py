"""Heads turn the embeddings of a task into a scalar loss; one contract for all of them."""
from fastssl.config import HEADS, MethodConfig

from .contrastive import ContrastiveHead
from .protonet import ProtoNetHead
from .r2d2 import R2D2Head


def build_head(method: MethodConfig):
    if method.head == "contrastive":
        return ContrastiveHead(method.temperature, impl=method.loss_impl)
    if method.head == "protonet":
        return ProtoNetHead(method.temperature, method.n_supp, impl=method.loss_impl)
    if method.head == "r2d2":
        return R2D2Head(method.temperature, method.n_supp, method.ridge_lambda, impl=method.loss_impl)
    raise ValueError(f"method.head={method.head!r}: must be one of {', '.join(HEADS)}")
