"""Heads turn the embeddings of a task into a scalar loss; one contract for all of them."""
from fastssl.config import HEADS, MethodConfig

from .contrastive import ContrastiveHead


def build_head(method: MethodConfig):
    if method.head == "contrastive":
        return ContrastiveHead(method.temperature)
    raise ValueError(f"method.head={method.head!r}: must be one of {', '.join(HEADS)}")
