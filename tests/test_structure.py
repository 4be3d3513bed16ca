"""Per-layer structure tables: parameter accounting, hook shapes, layer attributes, CSV and XLSX output."""

from __future__ import annotations

import pandas as pd
import pytest
import timm
import torch
from torch import nn

from cxr14.models.structure import COLUMNS, layer_table, write_layer_csv
from cxr14.reporting.workbook import write_structure_workbook


class PositionEmbeddingNet(nn.Module):
    """Holds a parameter on the root module itself, like a ViT position embedding.

    Its activation runs twice on different shapes; the table keeps the first call.
    """

    def __init__(self) -> None:
        super().__init__()
        self.position = nn.Parameter(torch.zeros(1, 8, 4, 4))
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.act = nn.ReLU()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(self.act(images))) + self.position


class TiedLinearNet(nn.Module):
    """Decoder weight tied to the encoder weight, and one module reachable under two names."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(48, 48)
        self.decoder = nn.Linear(48, 48)
        self.decoder.weight = self.encoder.weight
        self.head = nn.Linear(48, 48)
        self.head_alias = self.head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = images.flatten(1)
        return self.head_alias(self.head(torch.relu(self.decoder(self.encoder(tokens)))))


class AttentionBlock(nn.Module):
    """Patchify, then nn.MultiheadAttention, which returns (output, None) when weights are not needed."""

    def __init__(self) -> None:
        super().__init__()
        self.patchify = nn.Conv2d(3, 16, 4, stride=4)
        self.attention = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.patchify(images).flatten(2).transpose(1, 2)
        # key and value by keyword: the hook must see keyword inputs too
        attended, _ = self.attention(tokens, key=tokens, value=tokens, need_weights=False)
        return self.head(attended.mean(1))


def small_conv_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),  # 0
        nn.BatchNorm2d(8),  # 1
        nn.ReLU(),  # 2
        nn.MaxPool2d(2),  # 3
        nn.Conv2d(8, 8, 3, padding="same", bias=False),  # 4
        nn.Dropout(0.25),  # 5
        nn.Flatten(),  # 6
        nn.Linear(8 * 8 * 8, 5, bias=False),  # 7
    )


def by_layer(table: pd.DataFrame) -> pd.DataFrame:
    return table.set_index("layer_name")


@pytest.mark.parametrize(
    "build, input_size",
    [
        (PositionEmbeddingNet, (3, 8, 8)),
        (TiedLinearNet, (3, 4, 4)),
        (AttentionBlock, (3, 16, 16)),
        (lambda: timm.create_model("resnet18", pretrained=False, num_classes=15), (3, 32, 32)),
        (lambda: timm.create_model("mobilenetv2_100", pretrained=False, num_classes=15), (3, 32, 32)),
    ],
    ids=["root-parameter", "tied-linear", "multihead-attention", "resnet18", "mobilenetv2_100"],
)
def test_parameter_column_sums_to_model_total(build, input_size):
    model = build()
    table = layer_table(model, input_size, "net")
    assert list(table.columns) == COLUMNS
    assert table["parameters"].sum() == sum(p.numel() for p in model.parameters())
    assert table["layer_name"].is_unique


def test_root_parameter_gets_a_root_row():
    table = by_layer(layer_table(PositionEmbeddingNet(), (3, 8, 8), "net"))
    assert table.index[0] == "(root)"
    assert table.loc["(root)", "parameters"] == 8 * 4 * 4
    assert table.loc["(root)", "output_shape"] == "(None, 8, 4, 4)"


def test_module_called_twice_keeps_its_first_call():
    table = by_layer(layer_table(PositionEmbeddingNet(), (3, 8, 8), "net"))
    assert table.loc["act", "input_shape"] == "(None, 3, 8, 8)"
    assert table.loc["act", "output_shape"] == "(None, 3, 8, 8)"


def test_tied_weight_is_counted_at_its_first_owner_only():
    table = by_layer(layer_table(TiedLinearNet(), (3, 4, 4), "net"))
    assert table.loc["encoder", "parameters"] == 48 * 48 + 48
    assert table.loc["decoder", "parameters"] == 48  # its bias; the weight is the encoder's
    assert "head_alias" not in table.index  # the same module object appears once, under its first name


def test_multihead_attention_tuple_output_and_uncalled_module():
    table = by_layer(layer_table(AttentionBlock(), (3, 16, 16), "net"))
    # Input is (query, key, value); the None attention weights are left out of the output.
    assert table.loc["attention", "input_shape"] == "(None, 16, 16); (None, 16, 16); (None, 16, 16)"
    assert table.loc["attention", "output_shape"] == "(None, 16, 16)"
    assert table.loc["attention", "activation"] == ""  # defined beside the activations in torch, but is not one
    # out_proj's weight is used through a functional call, so its forward never runs.
    assert table.loc["attention.out_proj", "output_shape"] == ""
    assert table.loc["attention.out_proj", "parameters"] == 16 * 16 + 16


def test_shapes_of_a_known_conv_net():
    table = by_layer(layer_table(small_conv_net(), (3, 32, 32), "net"))
    assert table.loc["0", "input_shape"] == "(None, 3, 32, 32)"
    assert table.loc["0", "output_shape"] == "(None, 8, 16, 16)"
    assert table.loc["3", "output_shape"] == "(None, 8, 8, 8)"
    assert table.loc["4", "output_shape"] == "(None, 8, 8, 8)"
    assert table.loc["6", "output_shape"] == "(None, 512)"
    assert table.loc["7", "output_shape"] == "(None, 5)"


def test_layer_attribute_columns():
    table = by_layer(layer_table(small_conv_net(), (3, 32, 32), "net"))
    conv, norm, relu, pool, same_conv, dropout, flatten, linear = (table.loc[str(i)] for i in range(8))
    assert (conv["kernel_size"], conv["stride"], conv["padding"], conv["bias"]) == ("3x3", "2x2", "1x1", True)
    assert same_conv["padding"] == "same" and same_conv["bias"] is False
    assert (pool["kernel_size"], pool["stride"], pool["padding"]) == ("2x2", "2x2", "0x0")
    assert relu["activation"] == "relu" and conv["activation"] == "" and pool["activation"] == ""
    assert dropout["dropout_rate"] == pytest.approx(0.25)
    assert pd.isna(conv["dropout_rate"])
    assert norm["bias"] is True and norm["kernel_size"] == ""
    assert linear["bias"] is False
    assert flatten["bias"] is None and flatten["trainable"] is None and flatten["parameters"] == 0
    assert table["model"].eq("net").all()


def test_timm_activation_and_drop_path_are_recognised():
    model = timm.create_model("mobilenetv2_100", pretrained=False, num_classes=15, drop_path_rate=0.2)
    table = layer_table(model, (3, 32, 32), "mobilenet")
    assert "relu6" in set(table["activation"])
    drop_paths = table[table["layer_type"] == "DropPath"]
    assert len(drop_paths) > 0 and (drop_paths["dropout_rate"] > 0).all()


def test_timm_own_activation_class_is_recognised():
    model = nn.Sequential(nn.Linear(4, 4), timm.layers.activations.Swish())
    assert layer_table(model, (4,), "net")["activation"].tolist() == ["", "swish"]


def test_frozen_and_partly_frozen_layers():
    model = small_conv_net()
    model[0].weight.requires_grad_(False)
    model[1].requires_grad_(False)
    table = by_layer(layer_table(model, (3, 32, 32), "net"))
    assert table.loc["0", "trainable"] == "partial"
    assert table.loc["1", "trainable"] is False
    assert table.loc["7", "trainable"] is True


def test_training_flags_restored_and_hooks_removed():
    model = small_conv_net().train()
    model[1].eval()  # a frozen BatchNorm inside a training model must stay in eval
    layer_table(model, (3, 32, 32), "net")
    assert model.training and not model[1].training and model[0].training
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_hooks_with_kwargs


def test_failed_forward_still_restores_model():
    model = small_conv_net().train()
    with pytest.raises(RuntimeError, match="zero batch of shape"):
        layer_table(model, (5, 32, 32), "net")  # 5 channels for a 3-channel conv
    assert model.training
    assert all(not module._forward_hooks for module in model.modules())


@pytest.mark.parametrize("bad_size", [(), (3, 0, 32), (3, 32.0, 32)])
def test_bad_input_size_is_rejected(bad_size):
    with pytest.raises(ValueError, match="input_size"):
        layer_table(small_conv_net(), bad_size, "net")


def test_csv_round_trip(tmp_path):
    table = layer_table(small_conv_net(), (3, 32, 32), "net")
    path = tmp_path / "structure" / "net.csv"
    write_layer_csv(table, path)
    loaded = pd.read_csv(path, keep_default_na=False)
    assert list(loaded.columns) == COLUMNS
    assert loaded["layer_name"].astype(str).tolist() == table["layer_name"].tolist()
    assert loaded["parameters"].tolist() == table["parameters"].tolist()
    assert loaded["output_shape"].tolist() == table["output_shape"].tolist()


def test_workbook_has_summary_and_one_valid_sheet_per_model(tmp_path):
    tables = {
        name: layer_table(build(), input_size, name)
        for name, build, input_size in [
            ("timm:convnext_tiny", small_conv_net, (3, 32, 32)),
            ("x/y", PositionEmbeddingNet, (3, 8, 8)),
            ("x:y", TiedLinearNet, (3, 4, 4)),
            ("Summary", small_conv_net, (3, 32, 32)),
            ("a_very_long_model_name_that_goes_past_thirty_one", AttentionBlock, (3, 16, 16)),
        ]
    }
    path = tmp_path / "structure.xlsx"
    write_structure_workbook(tables, path)
    sheets = pd.read_excel(path, sheet_name=None)

    names = list(sheets)
    assert names[0] == "summary"
    assert names[1:3] == ["timm_convnext_tiny", "x_y"]
    assert len(names) == 1 + len(tables)
    assert len({name.lower() for name in names}) == len(names)
    assert all(len(name) <= 31 and not set(name) & set("[]:*?/\\") for name in names)

    summary = sheets["summary"].set_index("model")
    for model_name, table in tables.items():
        sheet = sheets[summary.loc[model_name, "sheet"]]
        assert sheet["layer_name"].astype(str).tolist() == table["layer_name"].tolist()
        assert sheet["parameters"].tolist() == table["parameters"].tolist()
        assert summary.loc[model_name, "rows"] == len(table)
        assert summary.loc[model_name, "params_total"] == table["parameters"].sum()


def test_workbook_summary_counts_trainable_parameters(tmp_path):
    model = small_conv_net()
    model[7].requires_grad_(False)
    path = tmp_path / "structure.xlsx"
    write_structure_workbook({"net": layer_table(model, (3, 32, 32), "net")}, path)
    summary = pd.read_excel(path, sheet_name="summary").iloc[0]
    total = sum(p.numel() for p in model.parameters())
    assert summary["params_total"] == total
    assert summary["params_trainable"] == total - model[7].weight.numel()


def test_empty_workbook_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="no tables"):
        write_structure_workbook({}, tmp_path / "structure.xlsx")


def test_identity_placeholders_are_not_layers():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Identity(), nn.ReLU())
    table = layer_table(model, (3, 8, 8), "with_identity")
    assert list(table["layer_type"]) == ["Conv2d", "ReLU"]
