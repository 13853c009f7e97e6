"""Prototype cross-entropy: the loss of DINO and SwAV, a teacher's softmax over K prototypes as the
target of every other view's student softmax (semantics: reference.proto_xent_reference).

Dispatch (kernels/runtime.py): CUDA tensors -> Triton, CPU tensors -> the reference, TRITON_INTERPRET=1
-> Triton on the CPU; float64 always takes the reference, the ground truth the tests compare against.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .reference import proto_xent_reference


class ProtoXent(NamedTuple):
    loss: torch.Tensor           # 0-d float32: the mean cross-entropy over view pairs and images
    teacher_mean: torch.Tensor   # (K,) float32: the mean teacher logit per prototype, before centring


def proto_xent(student: torch.Tensor, teacher: torch.Tensor, w_student: torch.Tensor,
               w_teacher: torch.Tensor | None = None, center: torch.Tensor | None = None, *, student_temp: float,
               teacher_temp: float, impl: str = "auto") -> ProtoXent:
    """The loss and the teacher's mean logits; gradients flow to `student` and `w_student` only.
    w_teacher None: the student's prototypes (detached), as SwAV has it."""
    w_teacher = w_student if w_teacher is None else w_teacher
    return ProtoXent(*proto_xent_reference(student, teacher, w_student, w_teacher, center,
                                           student_temp=student_temp, teacher_temp=teacher_temp))
