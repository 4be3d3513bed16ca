"""Grad-CAM, box localisation and embedding retrieval: exact cases, then every registered model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cxr14.data.loader import prepare_batch
from cxr14.evaluation.embeddings import extract_embeddings, finding_groups, retrieval_metrics, tsne_layout
from cxr14.evaluation.explain import select_gradcam_images
from cxr14.evaluation.gradcam import ExplainError, box_scores, find_taps, grad_cam, localisation_scores
from cxr14.labels import LABELS, NUM_CLASSES
from cxr14.models import ModelBundle, available_models, build_model

CPU = torch.device("cpu")


def bundle_of(model: nn.Module) -> ModelBundle:
    return ModelBundle(name="handmade", model=model, in_chans=1, mean=(0.0,), std=(1.0,))


class GapNet(nn.Module):
    """Conv -> ReLU -> global average pool -> Linear: Grad-CAM must equal the class activation map."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(6, NUM_CLASSES)

    def forward(self, images):
        return self.classifier(self.pool(self.features(images)).flatten(1))


class BrightnessNet(nn.Module):
    """Logit of every class = mean brightness: its evidence is wherever the image is bright."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(1, 1, 1, bias=False)
        nn.init.ones_(self.features.weight)
        self.classifier = nn.Linear(1, NUM_CLASSES)
        nn.init.ones_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, images):
        return self.classifier(self.features(images).mean(dim=(2, 3)))


def test_grad_cam_of_a_gap_network_is_the_class_activation_map():
    model = GapNet().eval()
    pixels = np.random.default_rng(1).integers(0, 256, (3, 16, 16), dtype=np.uint8)
    classes = [0, 4, 9]
    bundle = bundle_of(model)
    taps = find_taps(bundle, 16, CPU)
    assert (taps.feature_layer, taps.classifier_layer, taps.embedding_dim) == ("features", "classifier", 6)
    maps, probabilities = grad_cam(bundle, taps, pixels, classes, 16, CPU)
    with torch.no_grad():
        inputs = torch.from_numpy(pixels).float().unsqueeze(1) / 255
        activations = model.features(inputs)
        logits = model(inputs)
    for index, cls in enumerate(classes):
        # CAM (Zhou et al. 2016): sum_k w_ck A_k; Grad-CAM's weights are w_ck / (h*w), same map after scaling.
        cam = F.relu((model.classifier.weight[cls].detach().view(-1, 1, 1) * activations[index]).sum(0))
        expected = (cam / cam.max()).numpy()
        np.testing.assert_allclose(maps[index], expected, atol=1e-5)
        assert probabilities[index] == pytest.approx(torch.sigmoid(logits[index, cls]).item(), abs=1e-6)


def test_map_peaks_on_the_evidence_and_the_pointing_game_sees_it():
    pixels = np.zeros((2, 32, 32), np.uint8)
    pixels[0, 4:10, 20:28] = 255  # bright patch top right
    pixels[1, 22:30, 2:8] = 255  # bright patch bottom left
    bundle = bundle_of(BrightnessNet())
    taps = find_taps(bundle, 32, CPU)
    maps, _ = grad_cam(bundle, taps, pixels, [0, 0], 32, CPU)
    on_patch = pd.DataFrame(
        {"finding": ["Mass", "Mass"], "x": [20.0, 2.0], "y": [4.0, 22.0], "w": [8.0, 6.0], "h": [6.0, 8.0]}
    )
    elsewhere = on_patch.assign(x=[2.0, 20.0], y=[22.0, 4.0])
    hits = localisation_scores(maps, on_patch, threshold=0.5)
    misses = localisation_scores(maps, elsewhere, threshold=0.5)
    assert hits["overall"]["pointing_game"] == 1.0 and hits["overall"]["mean_iou"] > 0.9
    assert misses["overall"]["pointing_game"] == 0.0 and misses["overall"]["mean_iou"] == 0.0
    assert hits["per_finding"]["Mass"]["boxes"] == 2
    assert hits["overall"]["centre_baseline"] == 0.0  # neither box covers the centre
    assert hits["overall"]["empty_maps"] == 0
    empty = localisation_scores(np.zeros_like(maps), on_patch, threshold=0.5)["overall"]
    assert (empty["empty_maps"], empty["pointing_game"], empty["mean_iou"]) == (2, 0.0, 0.0)


def test_box_scores_by_hand():
    cam = np.zeros((10, 10), np.float32)
    cam[2:4, 2:6] = 1.0  # 8 "on" pixels
    box = pd.Series({"x": 2.0, "y": 2.0, "w": 2.0, "h": 2.0})  # 4 pixels, all on
    scores = box_scores(cam, box, threshold=0.5)
    assert scores == {"hit": 1.0, "iou": pytest.approx(4 / 8)}
    assert box_scores(np.zeros((10, 10), np.float32), box, 0.5)["iou"] == 0.0


def test_find_taps_refuses_a_model_without_spatial_layer():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, NUM_CLASSES))
    with pytest.raises(ExplainError, match="spatial"):
        find_taps(bundle_of(model), 16, CPU)


# Small input sizes each architecture accepts (ViTs need a multiple of their patch size).
SIZES = {"vit_v1": 64, "vit_v2": 64, "vit_b16": 64, "efficientnet_b4": 64}


@pytest.mark.parametrize("name", available_models())
def test_every_registered_model_gives_maps_and_embeddings(name):
    size = SIZES.get(name, 64)
    bundle = build_model(name, NUM_CLASSES, size, pretrained=False)
    taps = find_taps(bundle, size, CPU)
    pixels = np.random.default_rng(2).integers(0, 256, (2, 72, 72), dtype=np.uint8)
    maps, probabilities = grad_cam(bundle, taps, pixels, [1, 7], size, CPU)
    assert maps.shape == (2, 72, 72) and np.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1
    assert ((0 <= probabilities) & (probabilities <= 1)).all()
    vectors = extract_embeddings(bundle, taps, pixels, batch_size=1, image_size=size, device=CPU)
    assert vectors.shape == (2, taps.embedding_dim) and np.isfinite(vectors).all()
    # timm's interface gives the feature map, except where a ViT pools its class token (see below).
    assert taps.from_interface == (name != "vit_b16")


@pytest.mark.parametrize("name", ["cnn_gap", "convnextv2_seed", "resmobilenet_v1", "vit_v1", "mobilenetv2_100"])
def test_interface_taps_read_exactly_what_the_hooks_read(name):
    from cxr14.evaluation.gradcam import _find_taps_by_hooks

    torch.manual_seed(0)
    bundle = build_model(name, NUM_CLASSES, 64, pretrained=False)
    by_interface, by_hooks = find_taps(bundle, 64, CPU), _find_taps_by_hooks(bundle, 64, CPU, 0)
    assert by_interface.from_interface and not by_hooks.from_interface
    assert by_interface == dataclasses.replace(by_hooks, from_interface=True)  # same names recorded
    pixels = np.random.default_rng(2).integers(0, 256, (3, 72, 72), dtype=np.uint8)
    for left, right in zip(
        grad_cam(bundle, by_interface, pixels, [1, 7, 0], 64, CPU),
        grad_cam(bundle, by_hooks, pixels, [1, 7, 0], 64, CPU),
    ):
        np.testing.assert_array_equal(left, right)
    # Embeddings: forward_head(pre_logits=True) against the input of the classifier Linear.
    captured = []
    classifier = dict(bundle.model.named_modules())[by_hooks.classifier_layer]
    hook = classifier.register_forward_pre_hook(lambda mod, args: captured.append(args[0].detach()))
    try:
        with torch.no_grad():
            bundle.model(
                prepare_batch(torch.from_numpy(pixels).unsqueeze(1), bundle.in_chans, bundle.mean, bundle.std, 64)
            )
    finally:
        hook.remove()
    vectors = extract_embeddings(bundle, by_interface, pixels, batch_size=3, image_size=64, device=CPU)
    np.testing.assert_array_equal(vectors, captured[0].float().flatten(1).numpy())


def test_vit_with_class_token_is_read_before_its_last_attention():
    bundle = build_model("vit_b16", NUM_CLASSES, 64, pretrained=False)
    taps = find_taps(bundle, 64, CPU)
    # After the last attention only the class token reaches the head: patch tokens have no gradient there.
    assert (taps.feature_layer, taps.layout, taps.prefix_tokens) == ("blocks.11.norm1", "tokens", 1)


def one_hot(*names: str) -> np.ndarray:
    row = np.zeros(len(LABELS), np.uint8)
    for name in names:
        row[LABELS.index(name)] = 1
    return row


def test_retrieval_metrics_by_hand():
    vectors = np.array([[1.0, 0.0], [0.99, 0.1], [0.9, 0.4], [0.5, 0.8]])
    labels = np.stack([one_hot("Mass"), one_hot("Mass"), one_hot("Effusion"), one_hot("Mass", "Nodule")])
    result = retrieval_metrics(vectors, labels, np.array(["a", "b", "c", "d"]))
    # Rankings by cosine (relevant = shares a label):
    #   q0 -> 1 r, 2 -, 3 r: AP (1/1 + 2/3)/2;  q1 -> 0 r, 2 -, 3 r: same;
    #   q2 (Effusion) has no relevant image: not scored;  q3 -> 2 -, 1 r, 0 r: AP (1/2 + 2/3)/2, P@1 0.
    assert result["queries"] == 3
    assert result["precision_at_1"] == pytest.approx(2 / 3)
    assert result["recall_at_5"] == 1.0
    assert result["mean_average_precision"] == pytest.approx((2 * (1 + 2 / 3) / 2 + (1 / 2 + 2 / 3) / 2) / 3)
    assert result["chance_precision"] == pytest.approx(2 / 3)


def test_retrieval_excludes_the_query_patients_own_images():
    # Two follow-ups of patient p (same embedding, Mass); the other Mass image is far away.
    vectors = np.array([[1.0, 0.0], [1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = np.stack([one_hot("Mass"), one_hot("Mass"), one_hot("Effusion"), one_hot("Mass")])
    excluded = retrieval_metrics(vectors, labels, np.array(["p", "p", "q", "r"]))
    assert excluded["precision_at_1"] == 0.0  # each follow-up's nearest other-patient image is the Effusion
    counted = retrieval_metrics(vectors, labels, np.array(["p", "p2", "q", "r"]))
    assert counted["precision_at_1"] == pytest.approx(2 / 3)  # as separate patients they find each other


def test_perfect_and_random_embeddings():
    rng = np.random.default_rng(3)
    names = ["Mass", "Effusion", "Nodule", "No Finding"]
    labels = np.stack([one_hot(names[i % 4]) for i in range(400)])
    patients = np.arange(400).astype(str)
    perfect = labels.astype(float) + rng.normal(0, 0.01, labels.shape)
    scores = retrieval_metrics(perfect, labels, patients)
    assert scores["precision_at_1"] == 1.0 and scores["mean_average_precision"] == pytest.approx(1.0)
    random_scores = retrieval_metrics(rng.normal(size=(400, 16)), labels, patients)
    assert random_scores["chance_precision"] == pytest.approx(99 / 399)
    assert abs(random_scores["mean_average_precision"] - random_scores["chance_precision"]) < 0.05
    assert random_scores["precision_at_1"] < 0.4


def test_tsne_layout_is_seeded_and_subsamples():
    vectors = np.random.default_rng(4).normal(size=(60, 8))
    xy, rows = tsne_layout(vectors, max_points=40, perplexity=30, seed=7)
    again, rows_again = tsne_layout(vectors, max_points=40, perplexity=30, seed=7)
    assert xy.shape == (40, 2) and len(set(rows)) == 40 and (np.diff(rows) > 0).all()
    np.testing.assert_array_equal(rows, rows_again)
    np.testing.assert_allclose(xy, again)


def test_finding_groups():
    labels = np.stack([one_hot("Mass"), one_hot("Mass", "Nodule"), one_hot("No Finding")])
    assert finding_groups(labels) == ["Mass", "several findings", "No Finding"]


def test_gradcam_selection_is_fixed_boxed_first_and_never_no_finding():
    names = ["No Finding", "Mass", "Effusion", "Mass|Nodule", "No Finding", "Effusion", "Atelectasis", "Nodule"]
    labels = np.stack([one_hot(*entry.split("|")) for entry in names])
    index = pd.DataFrame({"image_id": [f"{i:03d}.png" for i in range(len(names))]})
    boxes = pd.DataFrame(
        {
            "row": [6, 3],
            "image_id": ["006.png", "003.png"],
            "finding": ["Atelectasis", "Nodule"],
            "x": [1.0, 1.0],
            "y": [1.0, 1.0],
            "w": [2.0, 2.0],
            "h": [2.0, 2.0],
        }
    )
    chosen = select_gradcam_images(index, labels, boxes, count=5, seed=0)
    assert chosen.equals(select_gradcam_images(index, labels, boxes, count=5, seed=0))
    assert set(chosen["row"][:2]) == {6, 3} and len(set(chosen["row"])) == len(chosen) == 5
    assert "No Finding" not in set(chosen["finding"])
    for row, finding in zip(chosen["row"], chosen["finding"]):
        assert labels[row, LABELS.index(finding)] == 1
    no_boxes = select_gradcam_images(index, labels, boxes.iloc[:0], count=20, seed=0)
    assert len(no_boxes) == 6  # every image with a finding, once
