"""TorchScript and ONNX export (cxr14.deploy.export): real exports of registered models, run back
with torch.jit.load and onnxruntime, against the PyTorch model on phantom radiographs.

Each architecture is exported once per module (64 px network input from a 96 px cache, so the
contract's second, non-integer area resize is exercised) and shared by the tests below.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from cxr14.config import ConfigError
from cxr14.data.cache import decode_and_resize
from cxr14.data.loader import prepare_batch
from cxr14.data.phantom import make_anatomy, render_image
from cxr14.deploy import export as export_module
from cxr14.deploy.export import (
    LOGIT_TOLERANCE,
    ExportError,
    ExportParityError,
    export_model,
    export_onnx,
    preprocessing_contract,
)
from cxr14.errors import InputDataError
from cxr14.labels import LABELS
from cxr14.models import ModelBundle, build_model

# The tests' own torch.jit.load/save calls: TorchScript is deprecated in favour of torch.export.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning")

IMAGE_SIZE = 64
PREPROCESS_SIZE = 96
# The four default models of params.yaml and the seed's pooled CNN; the slow ones (their ONNX
# translation alone takes 6-10 s) add the project's MobileNet/ResNet hybrid, CheXNet's DenseNet
# and timm's ViT-B/16. Every registered model was exported by hand (see cxr14.deploy.export).
MODELS = [
    "cnn",
    "vit_v1",
    "resnet18",
    "convnextv2_seed",
    "cnn_gap",
    pytest.param("resmobilenet_v2", marks=pytest.mark.slow),
    pytest.param("densenet121", marks=pytest.mark.slow),
    pytest.param("vit_b16", marks=pytest.mark.slow),
]
FILES = ["export.json", "model.onnx", "model.ts", "preprocessing.json"]


def phantom_pixels(count: int, size: int = PREPROCESS_SIZE, first_patient: int = 1) -> np.ndarray:
    """uint8 [count, size, size] phantom radiographs, with and without findings."""
    findings = [(), ("Effusion",), ("Cardiomegaly", "Mass"), ("Pneumothorax",)]
    return np.stack(
        [
            render_image(
                make_anatomy(0, patient),
                findings[patient % len(findings)],
                np.random.default_rng([0, patient]),
                size,
            )
            for patient in range(first_patient, first_patient + count)
        ]
    )


def build(name: str):
    torch.manual_seed(0)
    return build_model(name, 15, IMAGE_SIZE, pretrained=False)


@pytest.fixture(scope="module", params=MODELS)
def exported(request, tmp_path_factory):
    """(bundle, record, out_dir) of one architecture exported with a parity check on 4 images."""
    bundle = build(request.param)
    bundle.model.train()  # the export must not leave it in eval mode
    out_dir = tmp_path_factory.mktemp(request.param) / "export"
    record = export_model(bundle, IMAGE_SIZE, PREPROCESS_SIZE, out_dir, check_images=phantom_pixels(4))
    assert bundle.model.training and all(module.training for module in bundle.model.modules())
    bundle.model.eval()
    return bundle, record, out_dir


def inputs_of(bundle, pixels: np.ndarray) -> torch.Tensor:
    return prepare_batch(torch.from_numpy(pixels).unsqueeze(1), bundle.in_chans, bundle.mean, bundle.std, IMAGE_SIZE)


def run_onnx(path: Path, inputs: torch.Tensor) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [value.name for value in session.get_inputs()] == ["image"]
    assert [value.name for value in session.get_outputs()] == ["logits"]
    return session.run(["logits"], {"image": inputs.numpy()})[0]


def run_torchscript(path: Path, inputs: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.jit.load(str(path)).eval()(inputs).numpy()


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize(("file_name", "runner"), [("model.onnx", run_onnx), ("model.ts", run_torchscript)])
def test_exported_model_matches_pytorch_at_any_batch_size(exported, batch, file_name, runner):
    bundle, _, out_dir = exported
    inputs = inputs_of(bundle, phantom_pixels(batch, first_patient=20))  # not the export's check images
    with torch.no_grad():
        reference = bundle.model(inputs).numpy()
    logits = runner(out_dir / file_name, inputs)
    assert logits.shape == (batch, len(LABELS)) and logits.dtype == np.float32
    assert np.abs(logits - reference).max() <= LOGIT_TOLERANCE * max(1.0, np.abs(reference).max())
    assert np.abs(reference).max() > 1e-3  # the comparison is not between two near-zero outputs


def test_export_folder_and_record(exported):
    bundle, record, out_dir = exported
    assert sorted(path.name for path in out_dir.iterdir()) == FILES
    assert json.loads((out_dir / "export.json").read_text()) == json.loads(json.dumps(record))
    assert record["architecture"] == bundle.name
    assert (record["image_size"], record["preprocess_size"]) == (IMAGE_SIZE, PREPROCESS_SIZE)
    for name, entry in record["files"].items():
        payload = (out_dir / name).read_bytes()
        assert entry == {"bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
    parity = record["parity"]
    assert parity["images"] == 4 and parity["batch_sizes"] == [4, 1]
    assert parity["allowed_logit_difference"] == LOGIT_TOLERANCE * max(1.0, parity["reference_max_abs_logit"])
    for format_name in ("torchscript", "onnx"):
        measured = parity[format_name]
        assert 0.0 <= measured["max_abs_logit_difference"] <= parity["allowed_logit_difference"]
        # sigmoid's slope is at most 1/4
        assert measured["max_abs_probability_difference"] <= measured["max_abs_logit_difference"] / 4 + 1e-12


def test_both_model_files_carry_the_contract(exported):
    bundle, _, out_dir = exported
    contract = json.loads((out_dir / "preprocessing.json").read_text())
    assert contract == preprocessing_contract(bundle, IMAGE_SIZE, PREPROCESS_SIZE)
    metadata = {entry.key: entry.value for entry in onnx.load(str(out_dir / "model.onnx")).metadata_props}
    assert json.loads(metadata["cxr14.preprocessing"]) == contract
    extra = {"preprocessing.json": ""}
    torch.jit.load(str(out_dir / "model.ts"), _extra_files=extra)
    assert json.loads(extra["preprocessing.json"]) == contract


@pytest.mark.parametrize(
    ("name", "mean", "std"),
    [("cnn", [0.5] * 3, [0.25] * 3), ("cnn_gap", [0.0] * 3, [1.0] * 3), ("resnet18", None, None)],
)
def test_contract_fields(name, mean, std):
    bundle = build(name)
    contract = preprocessing_contract(bundle, IMAGE_SIZE, PREPROCESS_SIZE)
    assert contract["format"] == "cxr14-preprocessing" and contract["format_version"] == 1
    assert contract["architecture"] == name
    assert contract["input"] == {"name": "image", "dtype": "float32", "layout": "NCHW", "shape": ["batch", 3, 64, 64]}
    assert contract["output"]["name"] == "logits" and contract["output"]["shape"] == ["batch", 15]
    assert contract["output"]["labels"] == list(LABELS)
    assert "sigmoid" in contract["output"]["probabilities"]
    steps = contract["preprocessing"]
    assert [step["op"] for step in steps] == [
        "decode_gray8",
        "resize",
        "scale",
        "resize",
        "repeat_channels",
        "normalize",
    ]
    assert steps[1]["size"] == [96, 96] and steps[1]["method"] == "cv2.INTER_AREA"
    assert steps[3]["size"] == [64, 64] and "area" in steps[3]["method"]
    normalize = steps[-1]
    if mean is None:  # timm's ImageNet statistics, per channel
        mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    assert normalize["mean"] == pytest.approx(mean) and normalize["std"] == pytest.approx(std)
    same_size = preprocessing_contract(bundle, PREPROCESS_SIZE, PREPROCESS_SIZE)["preprocessing"]
    assert [step["op"] for step in same_size] == ["decode_gray8", "resize", "scale", "repeat_channels", "normalize"]
    json.dumps(contract, allow_nan=False)  # plain JSON


def follow_contract(path: Path, contract: dict) -> np.ndarray:
    """A consumer outside the project: the contract's steps with cv2 and numpy only."""
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).astype(np.float32)
    for step in contract["preprocessing"]:
        if step["op"] == "resize" and step["method"] == "cv2.INTER_AREA":
            image = cv2.resize(image.astype(np.uint8), tuple(step["size"]), interpolation=cv2.INTER_AREA)
        elif step["op"] == "scale":
            image = image.astype(np.float32) / np.float32(step["divide_by"])
        elif step["op"] == "resize":
            image = area_pool(area_pool(image, step["size"][0]).T, step["size"][1]).T
        elif step["op"] == "repeat_channels":
            image = np.repeat(image[None], step["channels"], axis=0)
        elif step["op"] == "normalize":
            mean, std = (np.asarray(step[key], np.float32)[:, None, None] for key in ("mean", "std"))
            image = (image - mean) / std
    return image


def area_pool(image: np.ndarray, size: int) -> np.ndarray:
    """Rows of `image` averaged down to `size` rows, as the contract's area resize describes."""
    rows = image.shape[0]
    spans = [(math.floor(i * rows / size), math.ceil((i + 1) * rows / size)) for i in range(size)]
    return np.stack([image[start:end].mean(axis=0) for start, end in spans])


def test_a_consumer_following_the_contract_gets_the_networks_input(tmp_path):
    radiograph = phantom_pixels(1, size=250)[0]  # an "original" at another size than the cache
    path = tmp_path / "radiograph.png"
    assert cv2.imwrite(str(path), radiograph)
    for name in ("cnn", "resnet18"):
        bundle = build(name)
        contract = preprocessing_contract(bundle, IMAGE_SIZE, PREPROCESS_SIZE)
        cache_pixels = decode_and_resize(path, PREPROCESS_SIZE)  # the project's own cache step
        expected = inputs_of(bundle, cache_pixels[None])[0].numpy()
        consumed = follow_contract(path, contract)
        assert consumed.shape == tuple(contract["input"]["shape"][1:]) == expected.shape
        np.testing.assert_allclose(consumed, expected, rtol=0, atol=1e-5)


def corrupt_onnx_classifier(path: Path, bundle) -> None:
    """Add 1 to the classifier bias stored in the ONNX file (every logit moves by 1)."""
    bias = [name for name, _ in bundle.model.named_parameters()][-1]
    assert bias.endswith("bias")
    model = onnx.load(str(path))
    initializer = next(tensor for tensor in model.graph.initializer if tensor.name == bias)
    initializer.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(initializer) + 1.0, bias))
    onnx.save(model, str(path))


def corrupt_torchscript_classifier(path: Path, bundle) -> None:
    """Add 1 to the classifier bias of the saved TorchScript model, keeping its extra files."""
    extra = {"preprocessing.json": ""}
    loaded = torch.jit.load(str(path), _extra_files=extra)
    with torch.no_grad():
        list(loaded.parameters())[-1].add_(1.0)
    torch.jit.save(loaded, str(path), _extra_files=extra)


@pytest.mark.parametrize(
    ("writer", "corrupt", "over_earlier_export"),
    [("export_onnx", corrupt_onnx_classifier, False), ("export_torchscript", corrupt_torchscript_classifier, True)],
)
def test_a_file_that_computes_otherwise_fails_the_parity_check_and_nothing_is_written(
    tmp_path, monkeypatch, writer, corrupt, over_earlier_export
):
    bundle = build("convnextv2_seed")
    out_dir = tmp_path / "export"
    before = {}
    if over_earlier_export:  # an earlier export (no parity check) must survive the failed one untouched
        export_model(bundle, IMAGE_SIZE, PREPROCESS_SIZE, out_dir)
        before = {path.name: path.read_bytes() for path in out_dir.iterdir()}
    real_writer = getattr(export_module, writer)

    def write_then_corrupt(bundle, image_size, path, *args, **kwargs):
        written = real_writer(bundle, image_size, path, *args, **kwargs)
        corrupt(written, bundle)
        return written

    monkeypatch.setattr(export_module, writer, write_then_corrupt)
    name = writer.removeprefix("export_")
    with pytest.raises(
        ExportParityError,
        match=rf"convnextv2_seed: the {name} export's logits differ from the PyTorch model's by up to 1 on 2 check",
    ):
        export_model(bundle, IMAGE_SIZE, PREPROCESS_SIZE, out_dir, check_images=phantom_pixels(2))
    if over_earlier_export:
        assert {path.name: path.read_bytes() for path in out_dir.iterdir()} == before
    assert sorted(path.name for path in tmp_path.iterdir()) == (["export"] if over_earlier_export else [])


def test_refused_before_exporting(tmp_path):
    bundle = build("convnextv2_seed")
    with pytest.raises(ConfigError, match="image_size 128 exceeds the cache size"):
        export_model(bundle, 128, PREPROCESS_SIZE, tmp_path / "a")
    with pytest.raises(InputDataError, match=r"check_images must be uint8 \[N, 96, 96\].*shape \[2, 64, 64\]"):
        export_model(bundle, IMAGE_SIZE, PREPROCESS_SIZE, tmp_path / "b", check_images=phantom_pixels(2, size=64))
    with pytest.raises(InputDataError, match="got float32"):
        export_model(bundle, IMAGE_SIZE, PREPROCESS_SIZE, tmp_path / "c", check_images=np.zeros((1, 96, 96), "f4"))
    foreign = tmp_path / "results"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="not empty and not an earlier export"):
        export_model(bundle, IMAGE_SIZE, PREPROCESS_SIZE, foreign)
    assert [path.name for path in foreign.iterdir()] == ["notes.txt"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["results"]


def test_weights_beyond_the_onnx_file_limit_are_refused_naming_the_model(tmp_path):
    # 2^30 float32 weights (4 GB) on the meta device: sized like the seed cnn at 1024 px, never allocated.
    bundle = ModelBundle("huge_cnn", nn.Linear(2**16, 2**14, device="meta"), 3, (0.0,), (1.0,))
    with pytest.raises(ExportError, match=r"huge_cnn: its weights take 4\.30 GB, beyond the 2 GB an ONNX file"):
        export_onnx(bundle, IMAGE_SIZE, tmp_path / "model.onnx")
    assert not any(tmp_path.iterdir())


class CountsBrightChannels(nn.Module):
    """Scales its logits by a number computed in Python from the input: a trace fixes it."""

    def __init__(self) -> None:
        super().__init__()
        self.classifier = nn.Linear(3, 15)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        means = images.mean(dim=(2, 3))
        bright = int((means > 0).sum())  # a Python int: traced as the example input's value
        return self.classifier(means) * bright


def test_a_model_whose_trace_fixes_a_value_fails_the_parity_check(tmp_path):
    torch.manual_seed(0)
    bundle = ModelBundle("counts_bright", CountsBrightChannels(), 3, (0.5,), (0.25,))
    with pytest.raises(
        ExportParityError, match="counts_bright: the torchscript export's logits differ.*make the forward"
    ):
        export_model(bundle, 32, 32, tmp_path / "export", check_images=phantom_pixels(3, size=32))
    assert not any(tmp_path.iterdir())


def test_the_exporters_log_nothing_at_info(tmp_path, caplog):
    # onnx_ir's optimiser logs a line per merged initializer (~100 for vit_v1) at INFO.
    bundle = build_model("vit_v1", 15, 64, pretrained=False)
    with caplog.at_level(logging.INFO):
        export_onnx(bundle, 64, tmp_path / "model.onnx")
    chatter = [record for record in caplog.records if not record.name.startswith("cxr14")]
    assert not chatter, [f"{record.name}: {record.getMessage()}" for record in chatter[:3]]
