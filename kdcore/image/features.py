"""Feature taps: capture intermediate outputs (or inputs) by module name with forward
hooks, so feature-based losses work on any model without editing it."""

from __future__ import annotations

from torch import Tensor, nn

from kdcore.registry import UnknownNameError


class FeatureTap:
    def __init__(
        self, model: nn.Module, layer_names: list[str], role: str = "model", inputs: bool = False
    ):
        """`inputs`: capture what each layer receives (the classifier's input is the
        penultimate feature) rather than what it returns."""
        modules = dict(model.named_modules())
        self.outputs: dict[str, Tensor] = {}
        self.names = list(layer_names)
        self.inputs = inputs
        self._handles = []
        for name in self.names:
            if name not in modules:
                raise UnknownNameError(f"{role} layer", name, [n for n in modules if n])
            self._handles.append(modules[name].register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def save(_module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            self.outputs[name] = inputs[0] if self.inputs else output

        return save

    def collect(self) -> list[Tensor]:
        feats = [self.outputs[n] for n in self.names]
        self.outputs = {}
        return feats

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def classifier_name(model: nn.Module) -> str | None:
    """The last nn.Linear in the model (its classifier head), or None."""
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and name]
    return linears[-1] if linears else None


def layer_shapes(model: nn.Module, example: Tensor) -> list[tuple[str, str, list[int]]]:
    """(name, module type, output shape) of every named module that returns a tensor,
    in the order they run on `example`: what `student_layers` / `teacher_layers` and
    `kdcore layers` offer."""
    import torch

    seen: list[tuple[str, str, list[int]]] = []
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def record(m: nn.Module, _inputs: object, output: object, name: str = name) -> None:
            if isinstance(output, Tensor):
                seen.append((name, type(m).__name__, list(output.shape)))

        handles.append(module.register_forward_hook(record))
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return seen
