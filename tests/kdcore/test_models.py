import pytest
import torch
import torchvision

from kdcore.image.features import FeatureTap
from kdcore.models import MODELS, build_model, count_parameters, default_feature_layers
from kdcore.registry import UnknownNameError

OWN = [
    "cifar_resnet8",
    "cifar_resnet20",
    "cifar_resnet32",
    "cifar_resnet56",
    "cifar_resnet110",
    "cifar_resnet8x4",
    "cifar_resnet32x4",
    "wrn_16_2",
    "wrn_40_2",
    "small_cnn",
    "mlp",
]


@pytest.mark.parametrize("arch", OWN)
@pytest.mark.parametrize("channels", [1, 3])
def test_own_models_adapt_to_classes_and_channels(arch, channels):
    model = build_model(arch, 7, (channels, 16, 16)).eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, 16, 16))
    assert out.shape == (2, 7)


def test_cifar_resnet_sizes_match_the_paper():
    # He et al. 2016, table 6: resnet20 0.27M, resnet56 0.85M, resnet110 1.7M (option A);
    # we use projection shortcuts, which add a few thousand parameters
    params = {
        d: count_parameters(build_model(f"cifar_resnet{d}", 10, (3, 32, 32))) for d in (20, 56, 110)
    }
    assert 0.26e6 < params[20] < 0.29e6
    assert 0.84e6 < params[56] < 0.88e6
    assert 1.7e6 < params[110] < 1.76e6


def test_every_torchvision_classification_model_is_registered():
    for name in torchvision.models.list_models(module=torchvision.models):
        assert name in MODELS


@pytest.mark.parametrize(
    "arch",
    [
        "resnet18",
        "mobilenet_v3_small",
        "efficientnet_b0",
        "squeezenet1_1",
        "regnet_y_400mf",
        "shufflenet_v2_x0_5",
    ],
)
def test_torchvision_models_take_grayscale_and_class_count(arch):
    model = build_model(arch, 5, (1, 64, 64)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 64, 64)).shape == (2, 5)


def test_vector_input_needs_mlp():
    assert build_model("mlp", 3, (20,))(torch.randn(4, 20)).shape == (4, 3)
    with pytest.raises(ValueError, match="image input"):
        build_model("small_cnn", 3, (20,))


def test_feature_taps_capture_named_layers_without_editing_the_model():
    model = build_model("cifar_resnet20", 10, (1, 32, 32)).eval()
    layers = default_feature_layers(model)
    assert layers == ["layer1", "layer2", "layer3"]
    tap = FeatureTap(model, layers)
    model(torch.randn(2, 1, 32, 32))
    shapes = [tuple(f.shape) for f in tap.collect()]
    assert shapes == [(2, 16, 32, 32), (2, 32, 16, 16), (2, 64, 8, 8)]
    tap.remove()
    model(torch.randn(2, 1, 32, 32))
    assert tap.outputs == {}


def test_unknown_layer_and_arch_list_the_choices():
    model = build_model("small_cnn", 10, (1, 8, 8))
    with pytest.raises(UnknownNameError, match="stage1"):
        FeatureTap(model, ["stage9"])
    with pytest.raises(UnknownNameError, match="cifar_resnet20"):
        MODELS.get("cifar_resnet21")


def test_a_deferred_family_loads_only_when_a_name_needs_it():
    from kdcore.registry import Registry

    loads: list[int] = []
    registry: Registry[int] = Registry("thing")
    registry.add("own", 1)

    def source(r: Registry[int]) -> None:
        loads.append(1)
        r.add("far", 2)

    registry.defer(source)
    assert registry.get("own") == 1 and "own" in registry and loads == []
    assert registry.get("far") == 2 and loads == [1]
    assert registry.names() == ["far", "own"] and loads == [1]  # loaded once
    with pytest.raises(UnknownNameError, match="far"):
        registry.get("fa")


def test_a_job_on_our_own_models_never_imports_torchvision():
    """torchvision costs a process about 1.8 s to import (it imports torch._dynamo):
    the service and a small_cnn training leave it alone until a name needs it."""
    import subprocess
    import sys

    code = (
        "import sys, app.main, kdcore\n"
        "from kdcore.models import build_model\n"
        "build_model('small_cnn', 3, (1, 8, 8))\n"
        "assert 'torchvision' not in sys.modules, 'imported'\n"
        "build_model('resnet18', 3, (1, 32, 32))\n"
        "assert 'torchvision' in sys.modules\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]


def test_threads_that_miss_at_once_all_find_the_deferred_names():
    """The service looks names up from several request threads: none may see the family
    half loaded and call a real name unknown."""
    import threading
    import time

    from kdcore.registry import Registry

    registry: Registry[int] = Registry("thing")

    def slow_source(r: Registry[int]) -> None:
        time.sleep(0.2)  # an import that takes a while
        r.add("far", 2)

    registry.defer(slow_source)
    found: list[int] = []
    threads = [threading.Thread(target=lambda: found.append(registry.get("far"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert found == [2, 2, 2, 2]
