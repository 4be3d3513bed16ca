"""The model registry: every architecture runs, has its designed size, and loads weights as documented.

Nothing here downloads: pretrained weights are either saved to a temp file by the test, or the
Hugging Face hub is switched offline to exercise the failure message.
"""

import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from cxr14.data.loader import prepare_batch
from cxr14.models import (
    PretrainedWeightsError,
    UnknownModelError,
    available_models,
    build_model,
    describe_model,
    resolve_pretrained,
    set_train_mode,
)

NUM_CLASSES = 15
ALL_MODELS = [*available_models(), "convnextv2_atto", "timm:resnet10t"]
# 32 px is the smallest size every model accepts (five 2x poolings, 32 px ViT patches) and keeps
# the parametrised test fast on CPU; spatial layouts at larger sizes are checked separately.
IMAGE_SIZE = 32


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_backward(name):
    torch.manual_seed(0)
    bundle = build_model(name, num_classes=NUM_CLASSES, image_size=IMAGE_SIZE, pretrained=False)
    assert bundle.in_chans == 3 and bundle.weights is None
    images = torch.randn(2, bundle.in_chans, IMAGE_SIZE, IMAGE_SIZE)
    logits = bundle.model(images)
    assert logits.shape == (2, NUM_CLASSES)
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    trainable = [(key, p) for key, p in bundle.model.named_parameters() if p.requires_grad]
    assert trainable
    for key, parameter in trainable:
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), key


def test_seed_cnn_parameter_count_is_exact():
    model = build_model("cnn", num_classes=NUM_CLASSES, image_size=224).model
    assert count_parameters(model) == 95_579_087


def test_convnextv2_seed_parameter_count_matches_the_layer_list():
    def layer_norm(channels):
        return 2 * channels

    def block(dim):
        depthwise = dim * 7 * 7 + dim
        expand = dim * 4 * dim + 4 * dim
        response_norm = 2 * 4 * dim  # gamma and beta per expanded channel
        project = 4 * dim * dim + dim
        return depthwise + layer_norm(dim) + expand + response_norm + project

    def downsample(dim_in, dim_out):
        return layer_norm(dim_in) + dim_in * dim_out * 2 * 2 + dim_out

    stem = 3 * 25 * 4 * 4 + 25 + layer_norm(25)
    head = layer_norm(100) + (100 * 128 + 128) + (128 * NUM_CLASSES + NUM_CLASSES)
    by_hand = stem + block(25) + downsample(25, 50) + block(50) + downsample(50, 100) + block(100) + head
    assert by_hand == 158_013  # the figure in convnext_seed's docstring
    model = build_model("convnextv2_seed", num_classes=NUM_CLASSES, image_size=224).model
    assert count_parameters(model) == by_hand


def test_grn_starts_as_identity():
    from cxr14.models.convnext_seed import GlobalResponseNorm

    features = torch.randn(2, 5, 5, 8)
    assert torch.equal(GlobalResponseNorm(8)(features), features)


def test_resmobilenet_parameter_counts_and_their_difference():
    v1 = build_model("resmobilenet_v1", num_classes=NUM_CLASSES, image_size=224).model
    v2 = build_model("resmobilenet_v2", num_classes=NUM_CLASSES, image_size=224).model
    assert count_parameters(v1) == 3_073_663
    assert count_parameters(v2) == 3_083_791
    batch_norm = 2  # weight and bias per channel
    mobilenet_stem = 3 * 16 * 3 * 3 + 16 * batch_norm
    resnet_stem = 3 * 64 * 7 * 7 + 64 * batch_norm
    # First inverted residual, expansion 16 -> depthwise 3x3 -> project to 16. With 16 input
    # channels (v1) there is no expansion conv; with 64 (v2) a 1x1 conv 64 -> 16 is added.
    depthwise_and_project = (16 * 3 * 3 + 16 * batch_norm) + (16 * 16 + 16 * batch_norm)
    first_block_v1 = depthwise_and_project
    first_block_v2 = (64 * 16 + 16 * batch_norm) + depthwise_and_project
    difference = (resnet_stem + first_block_v2) - (mobilenet_stem + first_block_v1)
    assert difference == 10_128
    assert count_parameters(v2) - count_parameters(v1) == difference


def test_resmobilenet_variants_agree_after_block_two_and_embed_on_the_unit_sphere():
    images = torch.randn(2, 3, 64, 64)
    shapes = {}
    for name in ("resmobilenet_v1", "resmobilenet_v2"):
        model = build_model(name, num_classes=NUM_CLASSES, image_size=64).model.eval()
        shapes[name] = model.blocks[:2](model.stem(images)).shape
        assert model.forward_features(images).shape == (2, 160, 2, 2)
        embedding = model.forward_head(model.forward_features(images), pre_logits=True)
        assert embedding.shape == (2, 512)
        assert torch.allclose(embedding.norm(dim=1), torch.ones(2), atol=1e-5)
        assert model.classifier is model.head.classifier
    assert shapes["resmobilenet_v1"] == shapes["resmobilenet_v2"] == (2, 24, 16, 16)


def test_vit_v1_shape_of_the_seed_and_v2_regularisation():
    v1 = build_model("vit_v1", num_classes=NUM_CLASSES, image_size=224).model
    assert v1.position.shape == (1, 49, 64)
    assert len(v1.blocks) == 8 and v1.blocks[0].attention.num_heads == 4
    v2 = build_model("vit_v2", num_classes=NUM_CLASSES, image_size=224).model
    assert count_parameters(v2) == count_parameters(v1)
    assert v2.blocks[0].attention.dropout == 0.2 and v1.blocks[0].attention.dropout == 0.1
    assert {m.p for m in v2.head if isinstance(m, nn.Dropout)} == {0.5}


def test_transfer_head_sits_on_the_backbone_features():
    bundle = build_model("vgg16", num_classes=NUM_CLASSES, image_size=32, pretrained=False)
    backbone_parameters = count_parameters(bundle.model.backbone)
    assert backbone_parameters == 14_714_688  # VGG16 convolutions only, as Keras include_top=False
    assert bundle.model.head[3].in_features == 512
    assert bundle.mean == pytest.approx((0.485, 0.456, 0.406))


def test_timm_normalisation_comes_from_timm():
    bundle = build_model("resnet34", num_classes=NUM_CLASSES, image_size=64)
    assert bundle.mean == pytest.approx((0.485, 0.456, 0.406))
    assert count_parameters(bundle.model) == pytest.approx(21.3e6, rel=0.01)
    assert build_model("vit_b16", NUM_CLASSES, 32, pretrained=False).mean == pytest.approx((0.5, 0.5, 0.5))


def test_freeze_backbone_trains_only_the_head():
    bundle = build_model("mobilenetv2_100", NUM_CLASSES, IMAGE_SIZE, pretrained=False, freeze_backbone=True)
    model = bundle.model
    trainable = [key for key, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(key.startswith("head.") for key in trainable)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == count_parameters(model.head)
    set_train_mode(model)
    batch_norms = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    assert batch_norms and not any(m.training for m in batch_norms)
    assert model.head.training and model.training


def test_freeze_backbone_needs_a_head():
    from cxr14.models import freeze_all_but_head

    headless = nn.Sequential(nn.Flatten(), nn.Linear(3 * IMAGE_SIZE * IMAGE_SIZE, NUM_CLASSES))
    with pytest.raises(ValueError, match="headless.*train.freeze_backbone: false"):
        freeze_all_but_head(headless, "headless")
    # The seed CNN has no `head`, but timm's get_classifier() names its last Linear.
    model = build_model("cnn", NUM_CLASSES, IMAGE_SIZE, freeze_backbone=True).model
    assert [key for key, p in model.named_parameters() if p.requires_grad] == ["9.weight", "9.bias"]


TOKEN_MODELS = {"vit_v1", "vit_v2", "vit_b16"}


@pytest.mark.parametrize("name", available_models())
def test_every_registered_model_has_timms_interface(name):
    """forward == forward_head(forward_features); features are a map (CNNs) or tokens (ViTs);
    pre_logits is the classifier's input; reset_classifier changes the number of outputs."""
    torch.manual_seed(0)
    model = build_model(name, NUM_CLASSES, 64, pretrained=False).model.eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = model.forward_features(images)
        assert torch.equal(model.forward_head(features), model(images))
        embedding = model.forward_head(features, pre_logits=True)
    assert features.ndim == (3 if name in TOKEN_MODELS else 4)
    classifier = model.get_classifier()
    assert isinstance(classifier, nn.Linear) and classifier.out_features == NUM_CLASSES
    assert embedding.shape == (2, classifier.in_features)
    with torch.no_grad():
        assert torch.equal(classifier(embedding), model(images))
    model.reset_classifier(5)
    assert model.get_classifier().out_features == 5
    with torch.no_grad():
        assert model(images).shape == (2, 5)


def test_a_bare_timm_name_is_built_with_a_warning_naming_the_timm_prefix(caplog, monkeypatch):
    from cxr14.models import registry

    monkeypatch.setattr(registry, "_WARNED_UNREGISTERED", set())  # whatever this process built before
    with caplog.at_level("WARNING", logger="cxr14.models.registry"):
        build_model("timm:resnet10t", NUM_CLASSES, IMAGE_SIZE, pretrained=False)
        build_model("resnet18", NUM_CLASSES, IMAGE_SIZE, pretrained=False)  # registered (the demo's)
    assert not caplog.records
    with caplog.at_level("WARNING", logger="cxr14.models.registry"):
        build_model("resnet10t", NUM_CLASSES, IMAGE_SIZE, pretrained=False)
    assert any("not registered" in r.getMessage() and "timm:resnet10t" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="cxr14.models.registry"):  # once per process and name
        build_model("resnet10t", NUM_CLASSES, IMAGE_SIZE, pretrained=False)
    assert not caplog.records


def test_the_registry_imports_no_model_module():
    """Model modules import the registry, never the reverse (no import circle)."""
    import ast
    import inspect

    from cxr14.models import registry

    imported = {
        node.module
        for node in ast.walk(ast.parse(inspect.getsource(registry)))
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert not {module for module in imported if module.startswith("cxr14.models")}


def test_pretrained_path_feeds_a_plain_timm_state_dict_to_the_backbone(tmp_path):
    import timm

    torch.manual_seed(123)
    source = timm.create_model("mobilenetv2_100")  # 1000-class head: timm drops it on load
    weights_file = tmp_path / "mobilenetv2_100.pth"
    torch.save(source.state_dict(), weights_file)

    torch.manual_seed(0)
    bundle = build_model("mobilenetv2_100", NUM_CLASSES, IMAGE_SIZE, pretrained_path=str(weights_file))
    assert bundle.weights == str(weights_file)
    saved = source.state_dict()
    loaded = bundle.model.backbone.state_dict()
    assert all(torch.equal(tensor, saved[key]) for key, tensor in loaded.items())
    torch.manual_seed(0)
    random_init = build_model("mobilenetv2_100", NUM_CLASSES, IMAGE_SIZE, pretrained=False).model.backbone.state_dict()
    assert not torch.equal(random_init["conv_stem.weight"], loaded["conv_stem.weight"])


def test_pretrained_path_accepts_our_own_checkpoint_head_included(tmp_path):
    torch.manual_seed(5)
    trained = build_model("mobilenetv2_100", NUM_CLASSES, IMAGE_SIZE, pretrained=False).model
    checkpoint = tmp_path / "best.pt"
    # Our best.pt also stores a numpy metric next to the weights.
    torch.save({"model": trained.state_dict(), "val_macro_auroc": np.float64(0.8)}, checkpoint)
    reloaded = build_model("mobilenetv2_100", NUM_CLASSES, IMAGE_SIZE, pretrained_path=str(checkpoint)).model
    for key, tensor in reloaded.state_dict().items():
        assert torch.equal(tensor, trained.state_dict()[key]), key


def test_pretrained_path_loads_a_scratch_model_strictly(tmp_path):
    torch.manual_seed(7)
    trained = build_model("cnn_gap", NUM_CLASSES, IMAGE_SIZE).model
    checkpoint = tmp_path / "best.pt"
    torch.save({"model": trained.state_dict(), "epoch": 3}, checkpoint)
    bundle = build_model("cnn_gap", NUM_CLASSES, IMAGE_SIZE, pretrained_path=str(checkpoint))
    assert bundle.weights == str(checkpoint)
    for key, tensor in bundle.model.state_dict().items():
        assert torch.equal(tensor, trained.state_dict()[key]), key
    with pytest.raises(PretrainedWeightsError, match=r"do not fit.*missing keys.*unexpected"):
        build_model("convnextv2_seed", NUM_CLASSES, IMAGE_SIZE, pretrained_path=str(checkpoint))


def test_pretrained_path_refuses_our_checkpoint_trained_on_other_input(tmp_path):
    """A cnn best.pt from before cnn's input was centred (it records mean 0, std 1) would start
    fine-tuning on input unlike what its first layer learned; the recorded normalisation must match."""
    torch.manual_seed(7)
    trained = build_model("cnn", NUM_CLASSES, IMAGE_SIZE).model
    checkpoint = tmp_path / "best.pt"
    torch.save({"model": trained.state_dict(), "input": {"in_chans": 3, "mean": [0.0], "std": [1.0]}}, checkpoint)
    with pytest.raises(PretrainedWeightsError, match=r"cnn: the weights in .*best.pt' were trained on input with "):
        build_model("cnn", NUM_CLASSES, IMAGE_SIZE, pretrained_path=str(checkpoint))
    torch.save({"model": trained.state_dict(), "input": {"in_chans": 3, "mean": [0.5], "std": [0.25]}}, checkpoint)
    assert build_model("cnn", NUM_CLASSES, IMAGE_SIZE, pretrained_path=str(checkpoint)).weights == str(checkpoint)


def test_missing_weights_file_names_the_path_and_the_key(tmp_path):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(PretrainedWeightsError, match=rf"{missing}.*pretrained_path"):
        build_model("densenet121", NUM_CLASSES, IMAGE_SIZE, pretrained_path=str(missing))


def test_scratch_model_has_no_published_weights():
    with pytest.raises(PretrainedWeightsError, match="no published weights exist for cnn_gap"):
        build_model("cnn_gap", NUM_CLASSES, IMAGE_SIZE, pretrained=True)


def test_offline_fetch_fails_fast_and_says_how_to_provide_weights(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # nothing cached
    started = time.perf_counter()
    with pytest.raises(PretrainedWeightsError) as failure:
        build_model("mobilenetv2_100", NUM_CLASSES, IMAGE_SIZE, pretrained=True)
    assert time.perf_counter() - started < 5
    message = str(failure.value)
    assert "mobilenetv2_100" in message and "HF_HOME" in message
    assert "train.overrides.mobilenetv2_100.pretrained_path" in message and "train.pretrained: false" in message
    assert failure.value.__cause__ is not None


def test_auto_resolves_to_the_design_default():
    assert resolve_pretrained("densenet121", "auto") is True
    assert resolve_pretrained("vit_b16", "auto") is True
    assert resolve_pretrained("cnn", "auto") is False
    assert resolve_pretrained("resnet34", "auto") is False
    assert resolve_pretrained("resnet18", "auto") is False
    assert resolve_pretrained("cnn", True) is True
    with pytest.raises(ValueError, match="'yes'"):
        resolve_pretrained("cnn", "yes")
    with pytest.raises(ValueError, match="train.pretrained"):
        build_model("cnn_gap", NUM_CLASSES, IMAGE_SIZE, pretrained="yes")


def test_published_weights_are_recorded_by_tag():
    import timm

    from cxr14.models.registry import _published_tag

    assert _published_tag(timm.create_model("resnet18")) == "timm:resnet18.a1_in1k"


def test_every_registered_model_is_described():
    assert all(describe_model(name) for name in available_models())


def test_unknown_model_lists_valid_names():
    with pytest.raises(UnknownModelError, match=r"unknown model 'resnet_9000'.*cnn.*vit_v1"):
        build_model("resnet_9000", num_classes=NUM_CLASSES, image_size=64)


def test_unknown_names_in_models_or_overrides_are_config_errors_with_a_suggestion():
    from cxr14.config import ConfigError
    from cxr14.models.registry import check_model_names

    check_model_names(["cnn", "convnextv2_seed", "resnet18", "timm:convnext_tiny"], "models")  # all valid
    with pytest.raises(
        ConfigError,
        match=r"^params.yaml: train.overrides: unknown model 'convnextv2_sed' \(did you "
        r"mean 'convnextv2_seed'\?\); valid names: cnn, .*vit_v1.*, or any timm "
        r"model name, e.g. timm:convnext_tiny",
    ):
        check_model_names({"convnextv2_sed": None, "cnn": None}, "train.overrides", "params.yaml")
    with pytest.raises(
        ConfigError,
        match=r"models: unknown model 'resnet_9000' .*, 'timm:convnext_tiy' \(did you "
        r"mean 'timm:convnext_tiny'\?\)",
    ):
        check_model_names(["resnet_9000", "cnn", "timm:convnext_tiy"], "models")


def test_unknown_model_error_is_a_one_line_config_error():
    from cxr14.cli import EXPECTED_ERRORS

    with pytest.raises(EXPECTED_ERRORS) as caught:
        build_model("convnextv2_sed", num_classes=NUM_CLASSES, image_size=64)
    assert isinstance(caught.value, UnknownModelError)
    assert str(caught.value).startswith("unknown model 'convnextv2_sed' (did you mean 'convnextv2_seed'?)")


@pytest.mark.parametrize("target", ["densenet121", "resnet34"])
def test_pretrained_file_of_another_architecture_is_refused(tmp_path, target):
    import timm

    weights_file = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), weights_file)
    with pytest.raises(PretrainedWeightsError) as caught:
        build_model(target, NUM_CLASSES, IMAGE_SIZE, pretrained_path=str(weights_file))
    message = str(caught.value)
    assert message.startswith(f"{target}: weights in {str(weights_file)!r} do not fit the model: ")
    assert "outside the classifier head are missing from the file (e.g. [" in message
    assert f"train.overrides.{target}.pretrained_path" in message
    if target == "resnet34":  # a partial fit: the extra blocks of resnet34 would stay random
        assert "'layer1.2.conv1.weight'" in message and "80 of its 180 tensors" in message and "100 found" in message
    else:
        assert "604 of its 604 tensors" in message and "0 found" in message


def test_pretrained_file_of_the_same_architecture_with_another_head_loads(tmp_path):
    import timm

    torch.manual_seed(11)
    source = timm.create_model("resnet34", pretrained=False, num_classes=7)
    weights_file = tmp_path / "resnet34.pth"
    torch.save(source.state_dict(), weights_file)
    bundle = build_model("resnet34", NUM_CLASSES, IMAGE_SIZE, pretrained_path=str(weights_file))
    assert bundle.weights == str(weights_file)
    loaded, saved = bundle.model.state_dict(), source.state_dict()
    assert all(torch.equal(tensor, saved[key]) for key, tensor in loaded.items() if not key.startswith("fc."))
    assert loaded["fc.weight"].shape == (NUM_CLASSES, 512)


def _stem_cosine(bundle, mean: tuple[float, ...], std: tuple[float, ...]) -> float:
    """Cosine similarity of the seed ConvNeXt stem's (conv + LayerNorm) outputs for a uniform grey
    150 and a uniform grey 210 image, prepared with `mean` and `std`."""
    pixels = torch.stack([torch.full((1, 32, 32), grey, dtype=torch.uint8) for grey in (150, 210)])
    inputs = prepare_batch(pixels, bundle.in_chans, mean, std, 32)
    with torch.no_grad():
        features = bundle.model.stem(inputs)[:, :, 0, 0]
    return float(torch.nn.functional.cosine_similarity(features[0], features[1], dim=0))


def test_seed_convnext_input_is_centred_so_its_stem_keeps_brightness():
    """The stem's LayerNorm cancels a patch's brightness on uncentred (/255) input, so an opacity
    looks like the lung around it and the model never learned the phantom; the registered
    normalisation centres the input, and two grey levels stay apart after the stem."""
    for seed in range(5):
        torch.manual_seed(seed)
        bundle = build_model("convnextv2_seed", NUM_CLASSES, 32, pretrained=False)
        assert _stem_cosine(bundle, bundle.mean, bundle.std) < 0.99
        assert _stem_cosine(bundle, (0.0,), (1.0,)) > 0.99  # the seeds' plain rescale: nearly parallel


def _first_conv_gradient_coherence(bundle, mean: tuple[float, ...], std: tuple[float, ...], seed: int) -> float:
    """Median over the seed CNN's first-layer filters of |sum of a filter's weight gradients| /
    sum of their sizes (1: all one sign), after one loss on random grey images 40..215 prepared
    with `mean` and `std` (filters with no gradient, whose ReLU never fired, left out)."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(40, 216, (8, 1, 32, 32), dtype=torch.uint8, generator=generator)
    labels = (torch.rand(8, NUM_CLASSES, generator=generator) < 0.2).float()
    bundle.model.zero_grad()
    logits = bundle.model(prepare_batch(pixels, bundle.in_chans, mean, std, 32))
    torch.nn.functional.binary_cross_entropy_with_logits(logits, labels).backward()
    grads = bundle.model[0].weight.grad.flatten(1)
    live = grads.abs().sum(1) > 0
    return float((grads.sum(1).abs() / grads.abs().sum(1))[live].median())


def test_seed_cnn_input_is_centred_so_its_first_filters_do_not_all_move_one_way():
    """The seed CNN has no normalisation layer: on the seeds' plain /255 input every pixel carries
    the same positive offset, so a first-layer filter's weight gradients nearly all share one sign
    (it can only brighten or darken as a whole, seed.py "Input scaling"); the registered
    normalisation centres the input and they do not."""
    for seed in range(5):
        torch.manual_seed(seed)
        bundle = build_model("cnn", NUM_CLASSES, 32, pretrained=False)
        assert _first_conv_gradient_coherence(bundle, bundle.mean, bundle.std, seed) < 0.6
        assert _first_conv_gradient_coherence(bundle, (0.0,), (1.0,), seed) > 0.95  # the seeds' rescale
    assert build_model("cnn_gap", NUM_CLASSES, 32, pretrained=False).mean == (0.0,)  # its BatchNorm centres


def test_seed_layer_norm_2d_equals_timms_bit_for_bit():
    from timm.layers import LayerNorm2d as TimmLayerNorm2d

    from cxr14.models.convnext_seed import LayerNorm2d

    torch.manual_seed(0)
    ours, timms = LayerNorm2d(25, eps=1e-3), TimmLayerNorm2d(25, eps=1e-3)
    with torch.no_grad():
        ours.weight.normal_(), ours.bias.normal_()
    timms.load_state_dict(ours.state_dict())  # the same parameter names
    features = torch.randn(2, 25, 9, 7) * 5 + 3
    assert torch.equal(ours(features), timms(features))


def test_the_seed_models_build_without_importing_timm_or_torchvision():
    """Importing timm imports torchvision and torch._dynamo (~1.5 s): every stage of a model that
    needs neither would pay it at start-up. A fresh interpreter shows what building them imports."""
    code = (
        "import sys\n"
        "from cxr14.models import build_model\n"
        "for name in ('cnn', 'cnn_gap', 'vit_v1', 'vit_v2', 'convnextv2_seed'):\n"
        "    build_model(name, 15, 64, pretrained=False)\n"
        "print(sorted(m for m in ('timm', 'torchvision') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_demos_resnet18_is_registered_and_is_timms_resnet18_unchanged():
    # Registered so the default pipeline logs no "not registered" warning: the network, its
    # initialisation and its normalisation must stay those of timm's plain resnet18.
    torch.manual_seed(0)
    registered = build_model("resnet18", NUM_CLASSES, IMAGE_SIZE, pretrained=False)
    torch.manual_seed(0)
    plain = build_model("timm:resnet18", NUM_CLASSES, IMAGE_SIZE, pretrained=False)
    assert "resnet18" in available_models()
    assert (registered.in_chans, registered.mean, registered.std) == (plain.in_chans, plain.mean, plain.std)
    ours, timms = registered.model.state_dict(), plain.model.state_dict()
    assert ours.keys() == timms.keys() and all(torch.equal(ours[key], timms[key]) for key in ours)
