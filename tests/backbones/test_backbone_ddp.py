"""A timm ViT under DDP (two CPU processes over gloo) trains as one process on the global batch does, and
SyncBatchNorm converts a torchvision ResNet's every BatchNorm.

The ViT has LayerNorm only and the projector is built without BatchNorm here, so nothing depends on
per-process batch statistics: two ranks of 16 images must reach the weights one process reaches with 32.
"""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytest.importorskip("timm")

WORLD = 2
RUN = ["data.num_train=64", "data.num_test=32", "loader.batch_size=32", "train.max_steps=2", "train.device=cpu",
       "train.precision=fp32", "knn.k=5", "knn.every_epochs=0", "model.projector_hidden=32", "model.projector_out=16",
       "model.projector_bn=false", "method.loss_impl=reference", "augment.impl=reference",
       "model.arch=timm/vit_tiny_patch16_224",
       "model.kwargs={img_size: 32, patch_size: 4, depth: 1, embed_dim: 48, num_heads: 3}"]




def _weights(trainer) -> dict:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    from fastssl.config import load_config
    from fastssl.engine.trainer import Trainer

    trainer = Trainer(load_config(None, RUN), f"{out}/ddp")
    trainer.fit()
    torch.save(_weights(trainer), f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_vit_under_ddp_equals_one_process_on_the_global_batch(tmp_path, monkeypatch, gloo_port):
    mp.spawn(_worker, args=(gloo_port, str(tmp_path)), nprocs=WORLD)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for name, value in ranks[0].items():
        assert torch.equal(value, ranks[1][name]), name
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    from fastssl.config import load_config
    from fastssl.engine.trainer import Trainer

    one = Trainer(load_config(None, RUN), tmp_path / "one")
    start = _weights(one)
    one.fit()
    assert not torch.equal(start["encoder.blocks.0.attn.qkv.weight"], ranks[0]["encoder.blocks.0.attn.qkv.weight"])
    # Sums in another order round differently in the last bits: equal within float32 rounding.
    for name, value in _weights(one).items():
        torch.testing.assert_close(ranks[0][name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_sync_bn_converts_every_batch_norm_of_a_torchvision_resnet():
    from fastssl.config import load_config
    from fastssl.engine.distributed import sync_batch_norm
    from fastssl.models import build_model

    model = build_model(load_config(None, ["model.arch=torchvision/resnet18"]).model, image_size=32)
    norms = [n for n, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    synced = sync_batch_norm(model, torch.device("cuda"))   # conversion itself needs no GPU
    assert [n for n, m in synced.named_modules() if isinstance(m, torch.nn.SyncBatchNorm)] == norms
    assert len(norms) == 20 + 1   # torchvision's resnet18: 20 in the network, 1 in the 2-layer projector
