import pytest
import torch

from cxr14.models import available_models, build_model
from cxr14.models.registry import UnknownModelError

ALL_MODELS = [*available_models(), "resnet34", "timm:resnet18"]


@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_backward(name):
    torch.manual_seed(0)
    bundle = build_model(name, num_classes=15, image_size=64)
    images = torch.randn(2, bundle.in_chans, 64, 64)
    logits = bundle.model(images)
    assert logits.shape == (2, 15)
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    grads = [p.grad for p in bundle.model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_seed_cnn_parameter_count_is_exact():
    model = build_model("cnn", num_classes=15, image_size=224).model
    assert sum(p.numel() for p in model.parameters()) == 95_579_087


def test_vit_v1_shape_of_the_seed():
    model = build_model("vit_v1", num_classes=15, image_size=224).model
    assert model.position.shape == (1, 49, 64)
    assert len(model.blocks) == 8 and model.blocks[0].attention.num_heads == 4


def test_timm_normalisation_comes_from_timm():
    bundle = build_model("resnet34", num_classes=15, image_size=64)
    assert bundle.mean == pytest.approx((0.485, 0.456, 0.406))
    assert sum(p.numel() for p in bundle.model.parameters()) == pytest.approx(21.3e6, rel=0.01)


def test_unknown_model_lists_valid_names():
    with pytest.raises(UnknownModelError, match=r"unknown model 'resnet_9000'.*cnn.*vit_v1"):
        build_model("resnet_9000", num_classes=15, image_size=64)
