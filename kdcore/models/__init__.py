"""Model registry. A builder takes (num_classes, input_shape) and returns a fresh,
randomly initialised nn.Module; `input_shape` is (C, H, W) for images or (D,) for
vectors, so the first layer adapts to grayscale or vector inputs."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from torch import nn

from kdcore.models import ecosystems
from kdcore.models.cifar_resnet import CIFAR_RESNETS, CifarResNet
from kdcore.models.small import MLP, SmallCNN
from kdcore.models.wrn import WIDE_RESNETS, WideResNet
from kdcore.registry import Registry

ModelBuilder = Callable[[int, tuple[int, ...]], nn.Module]
MODELS: Registry[ModelBuilder] = Registry(
    "architecture", "`kdcore list models`, GET /v1/capabilities"
)


def _image_channels(input_shape: tuple[int, ...], arch: str) -> int:
    if len(input_shape) != 3:
        raise ValueError(f"{arch} needs image input (C, H, W); got shape {list(input_shape)}")
    return input_shape[0]


def _cifar_resnet(depth: int, widths, num_classes: int, input_shape) -> nn.Module:
    return CifarResNet(depth, widths, num_classes, _image_channels(input_shape, "cifar_resnet"))


def _wrn(depth: int, widen: int, num_classes: int, input_shape) -> nn.Module:
    return WideResNet(depth, widen, num_classes, _image_channels(input_shape, "wrn"))


for _name, (_depth, _widths) in CIFAR_RESNETS.items():
    MODELS.add(_name, partial(_cifar_resnet, _depth, _widths))
for _name, (_depth, _widen) in WIDE_RESNETS.items():
    MODELS.add(_name, partial(_wrn, _depth, _widen))
MODELS.add("small_cnn", lambda n, s: SmallCNN(n, _image_channels(s, "small_cnn")))
MODELS.add("small_cnn_wide", lambda n, s: SmallCNN(n, _image_channels(s, "small_cnn"), width=64))
MODELS.add("mlp", lambda n, s: MLP(n, tuple(s)))
MODELS.add("mlp_small", lambda n, s: MLP(n, tuple(s), hidden=64))


def _replace_first_conv(model: nn.Module, in_ch: int) -> None:
    """torchvision models expect 3 channels; rebuild their first conv for `in_ch`."""
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                if child.in_channels == in_ch:
                    return
                old: Any = child  # torchvision stores conv geometry as generic tuples
                new = nn.Conv2d(
                    in_ch,
                    old.out_channels,
                    old.kernel_size,
                    old.stride,
                    old.padding,
                    old.dilation,
                    child.groups if child.groups == 1 else in_ch,
                    child.bias is not None,
                    child.padding_mode,
                )
                setattr(parent, child_name, new)
                return


def _torchvision(name: str, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    import torchvision

    in_ch = _image_channels(input_shape, name)
    kwargs: dict = {"weights": None, "num_classes": num_classes}
    if name.startswith("vit_"):
        kwargs["image_size"] = input_shape[1]
    if name in ("googlenet", "inception_v3"):
        kwargs["aux_logits"] = False
        kwargs["init_weights"] = True
    model = torchvision.models.get_model(name, **kwargs)
    _replace_first_conv(model, in_ch)
    return model


def _register_torchvision(registry: Registry[ModelBuilder]) -> None:
    import torchvision  # deferred: a job on our own models never imports it

    for name in torchvision.models.list_models(module=torchvision.models):
        registry.add(name, partial(_torchvision, name))


MODELS.defer(_register_torchvision)


def build_model(
    arch: str,
    num_classes: int,
    input_shape: tuple[int, ...],
    config: dict[str, Any] | None = None,
) -> nn.Module:
    """A fresh model: a registry name, `timm:<name>` or `hf:<Class>` (with its config)."""
    if arch.startswith(ecosystems.TIMM):
        return ecosystems.build_timm(arch, num_classes, tuple(input_shape))
    if arch.startswith(ecosystems.HF):
        return ecosystems.build_hf(arch, num_classes, tuple(input_shape), config)
    return MODELS.get(arch)(num_classes, tuple(input_shape))


def is_known(arch: str) -> bool:
    return ecosystems.known(arch) if ecosystems.is_prefixed(arch) else arch in MODELS


def unknown_arch(arch: str) -> str:
    if arch.startswith(ecosystems.TIMM):
        return f"unknown timm model {arch.removeprefix(ecosystems.TIMM)!r} (kdcore list models)"
    if arch.startswith(ecosystems.HF):
        return (
            f"{arch.removeprefix(ecosystems.HF)!r} is not a transformers image classification "
            "class (kdcore list models)"
        )
    return str(MODELS.unknown(arch))


def default_feature_layers(model: nn.Module) -> list[str]:
    """Layer names tapped by feature methods when the spec names none: the model's own
    list where it has one (our models, torchvision ResNets), else nothing."""
    layers = getattr(model, "feature_layers", None)
    if layers:
        return list(layers)
    names = {n for n, _ in model.named_children()}
    if {"layer1", "layer2", "layer3", "layer4"} <= names:
        return ["layer2", "layer3", "layer4"]
    return []


def count_parameters(model: nn.Module) -> int:
    """torch parameters, plus the weights of any ONNX graph inside (kdcore.models.onnx)."""
    graphs = sum(getattr(m, "onnx_parameters", 0) for m in model.modules())
    return sum(p.numel() for p in model.parameters()) + graphs


def architecture_names() -> list[str]:
    """The registry's names, then every timm:<name> and hf:<Class>."""
    return [*MODELS.names(), *ecosystems.timm_names(), *ecosystems.hf_names()]


def parameter_count(arch: str, num_classes: int, input_shape: tuple[int, ...]) -> int | None:
    """Parameters of `arch` at this shape, built on the meta device (no memory); None
    where it cannot be built so (an hf class needs its config, a model may refuse the
    shape)."""
    import torch

    try:
        with torch.device("meta"):
            return count_parameters(build_model(arch, num_classes, input_shape))
    except (ValueError, RuntimeError, TypeError, AssertionError, NotImplementedError):
        return None
