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
