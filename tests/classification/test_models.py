import pytest
import torch
from jsonargparse import ArgumentParser
from torch import nn

from lightning_mixup.classification.models import CifarResNet18, PreActResNet18, SmallCNN


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("model_cls", [CifarResNet18, PreActResNet18])
@pytest.mark.parametrize("num_classes", [10, 100])
def test_resnets_map_cifar_images_to_logits(model_cls, num_classes):
    model = model_cls(num_classes=num_classes)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, num_classes)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_cifar_resnet18_keeps_full_resolution_in_the_first_stage():
    model = CifarResNet18()
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    sizes = {}
    for name in ("layer1", "layer2", "layer3", "layer4"):
        layer = getattr(model, name)
        layer.register_forward_hook(
            lambda m, i, o, name=name: sizes.__setitem__(name, tuple(o.shape[2:]))
        )
    model(torch.randn(1, 3, 32, 32))
    assert sizes == {"layer1": (32, 32), "layer2": (16, 16), "layer3": (8, 8), "layer4": (4, 4)}


def test_cifar_resnet18_has_resnet18_parameter_count():
    # torchvision's resnet18(num_classes=10) minus its 7x7 stem plus a 3x3 one: 64*3*(9 - 49) fewer.
    from torchvision.models import resnet18

    expected = _n_params(resnet18(num_classes=10)) + 64 * 3 * (9 - 49)
    assert _n_params(CifarResNet18(num_classes=10)) == expected == 11_173_962


def test_preact_resnet18_parameter_count():
    # 11,171,146 is the count of the mixup paper's PreActResNet18 (facebookresearch/mixup-cifar10);
    # ours adds He et al.'s final BatchNorm2d(512): 2 * 512 more parameters.
    assert _n_params(PreActResNet18(num_classes=10)) == 11_171_146 + 2 * 512
    # The classifier is the only part that depends on num_classes.
    assert (
        _n_params(PreActResNet18(num_classes=100)) - _n_params(PreActResNet18(num_classes=10))
        == 90 * 513
    )


def test_preact_block_is_an_identity_mapping_when_its_residual_is_zero():
    model = PreActResNet18().eval()
    block = model.layer1[0]  # 64 -> 64, stride 1: identity shortcut
    assert block.shortcut is None
    nn.init.zeros_(block.conv2.weight)
    x = torch.randn(2, 64, 8, 8)
    # Pre-activation: nothing follows the addition, so the input passes through unchanged.
    assert torch.equal(block(x), x)


def test_preact_projection_shortcut_reads_the_preactivated_input():
    model = PreActResNet18().eval()
    block = model.layer2[0]  # 64 -> 128, stride 2
    assert isinstance(block.shortcut, nn.Conv2d)
    nn.init.zeros_(block.conv2.weight)
    with torch.no_grad():
        block.bn1.bias.fill_(-0.5)  # makes relu(bn1(x)) differ from x in sign and value
        x = torch.randn(2, 64, 8, 8)
        expected = block.shortcut(torch.relu(block.bn1(x)))
        assert torch.allclose(block(x), expected)
        assert expected.shape == (2, 128, 4, 4)


@pytest.mark.parametrize(
    ("in_channels", "size"),
    [(1, (8, 8)), (1, (16, 16)), (1, (1, 16)), (1, (4, 4)), (3, (7, 5)), (3, (32, 32))],
)
def test_small_cnn_accepts_any_spatial_size(in_channels, size):
    model = SmallCNN(num_classes=7, in_channels=in_channels, width=8)
    out = model(torch.randn(3, in_channels, *size))
    assert out.shape == (3, 7)
    assert torch.isfinite(out).all()


def test_small_cnn_width_sets_channels_and_gradients_reach_every_parameter():
    model = SmallCNN(num_classes=10, in_channels=1, width=16)
    assert model.fc.in_features == 32
    model(torch.randn(4, 1, 8, 8)).logsumexp(dim=1).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_small_cnn_is_small():
    assert _n_params(SmallCNN(num_classes=10, in_channels=1, width=32)) < 50_000


@pytest.mark.parametrize("model_cls", [CifarResNet18, PreActResNet18, SmallCNN])
@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "10"])
def test_num_classes_must_be_a_positive_integer(model_cls, bad):
    with pytest.raises(
        ValueError, match=rf"^`num_classes` must be a positive integer, got {bad!r}\.$"
    ):
        model_cls(num_classes=bad)


@pytest.mark.parametrize("name", ["in_channels", "width"])
@pytest.mark.parametrize("bad", [0, 1.0, False])
def test_small_cnn_sizes_must_be_positive_integers(name, bad):
    with pytest.raises(ValueError, match=rf"^`{name}` must be a positive integer, got {bad!r}\.$"):
        SmallCNN(**{name: bad})


@pytest.mark.parametrize("class_name", ["CifarResNet18", "PreActResNet18", "SmallCNN"])
def test_models_build_from_a_class_path_config(class_name):
    parser = ArgumentParser()
    parser.add_argument("--backbone", type=nn.Module)
    config = {
        "class_path": f"lightning_mixup.classification.models.{class_name}",
        "init_args": {"num_classes": 4},
    }
    cfg = parser.parse_object({"backbone": config})
    # `instantiate` replaced `instantiate_classes` in jsonargparse 4.49; the floor is older.
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    model = instantiate(cfg).backbone
    assert type(model).__name__ == class_name
    in_channels = 1 if class_name == "SmallCNN" else 3
    assert model(torch.randn(2, in_channels, 32, 32)).shape == (2, 4)
