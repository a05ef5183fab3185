"""The search space: each knob of training as data, sampled the course's way, and narrowed coarse to fine.

Rates, decays and strengths are sampled log-uniformly (their effect is multiplicative: 1e-4 to
1e-3 matters as much as 1e-3 to 1e-2), shares uniformly, presets and sizes as categories. The
fine stage samples within the range of the best coarse trials, and a best value in the outer
tenth of its range is reported with a wider range to try: the optimum may lie beyond it.

    parameters = resolve_parameters(["learning_rate", "dropout"], kind="finetune")
    values = {p.name: p.suggest(trial) for p in parameters}     # an Optuna trial
    config = apply_values(base_config, values)
    fine = narrow(parameters, [trial.params for trial in best_three], widen_share=0.1)
"""

from __future__ import annotations

import dataclasses
import math

from finetune.config import TrainConfig
from finetune.errors import FinetuneError

KINDS = ("log", "uniform", "int", "categorical")


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One knob: its name, how it is sampled, its range (or choices) and the limits no range may pass."""

    name: str
    kind: str  # one of KINDS
    low: float | None = None
    high: float | None = None
    choices: tuple = ()
    # Beyond these a value means nothing (a share above 1, a rate of 0 on a log scale).
    limits: tuple[float | None, float | None] = (None, None)
    applies_to: str = "finetune"  # "finetune" (finetuning strategies), "linear", or "both"
    help: str = ""

    def suggest(self, trial):
        """The value of this parameter for an Optuna `trial`."""
        if self.kind == "log":
            return trial.suggest_float(self.name, self.low, self.high, log=True)
        if self.kind == "uniform":
            return trial.suggest_float(self.name, self.low, self.high)
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high))
        return trial.suggest_categorical(self.name, list(self.choices))

    def contains(self, value) -> bool:
        if self.kind == "categorical":
            return value in self.choices
        return value is not None and self.low <= value <= self.high

    def position(self, value) -> float:
        """Where `value` lies in the range: 0 at `low`, 1 at `high` (on the log scale for log parameters)."""
        if self.high == self.low:
            return 0.5
        if self.kind == "log":
            return (math.log(value) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        return (value - self.low) / (self.high - self.low)

    def _scaled(self, value: float) -> float:
        return math.log(value) if self.kind == "log" else float(value)

    def _unscaled(self, value: float) -> float:
        return math.exp(value) if self.kind == "log" else value

    def _clipped(self, low: float, high: float) -> "Parameter":
        floor, ceiling = self.limits
        low = max(low, floor) if floor is not None else low
        high = min(high, ceiling) if ceiling is not None else high
        if self.kind == "int":
            low, high = int(math.floor(low)), int(math.ceil(high))
        return dataclasses.replace(self, low=low, high=high)

    def narrowed(self, values: list, widen_share: float) -> "Parameter":
        """This range shrunk to span `values` (the best trials'), widened by `widen_share` of it on each side."""
        if self.kind == "categorical":
            kept = tuple(choice for choice in self.choices if choice in values)
            return dataclasses.replace(self, choices=kept or self.choices)
        span = self._scaled(self.high) - self._scaled(self.low)
        low = min(self._scaled(value) for value in values) - widen_share * span
        high = max(self._scaled(value) for value in values) + widen_share * span
        low, high = max(low, self._scaled(self.low)), min(high, self._scaled(self.high))
        return self._clipped(self._unscaled(low), self._unscaled(high))

    def widened(self, side: str) -> "Parameter | None":
        """The range moved out on `side` ("low" or "high"): a decade for log parameters, half the span otherwise.

        None when the range already touches the limit on that side.
        """
        floor, ceiling = self.limits
        if (side == "low" and floor is not None and self.low <= floor) or \
                (side == "high" and ceiling is not None and self.high >= ceiling):
            return None
        if self.kind == "log":
            low, high = (self.low / 10, self.high) if side == "low" else (self.low, self.high * 10)
        else:
            step = max((self.high - self.low) / 2, 1 if self.kind == "int" else 0)
            low, high = (self.low - step, self.high) if side == "low" else (self.low, self.high + step)
        return self._clipped(low, high)

    def range_text(self) -> str:
        if self.kind == "categorical":
            return ",".join(str(choice) for choice in self.choices)
        return f"{self.low:g}:{self.high:g}"

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "low": self.low, "high": self.high,
                "choices": list(self.choices), "applies_to": self.applies_to}


_SHARE = (0.0, 1.0)
PARAMETERS: dict[str, Parameter] = {parameter.name: parameter for parameter in (
    Parameter("learning_rate", "log", 1e-4, 1e-2, limits=(1e-7, 1.0), help="the head's rate (Adam)"),
    Parameter("backbone_learning_rate_multiplier", "log", 0.01, 1.0, limits=(1e-4, 10.0),
              help="the backbone's rate as a share of the head's"),
    Parameter("weight_decay", "log", 1e-4, 0.1, limits=(1e-7, 1.0), help="decoupled weight decay"),
    Parameter("dropout", "uniform", 0.0, 0.5, limits=(0.0, 0.9), help="dropout before the classifier"),
    Parameter("label_smoothing", "uniform", 0.0, 0.2, limits=(0.0, 0.5)),
    Parameter("augment", "categorical", choices=("none", "light", "standard", "strong"), help="augmentation preset"),
    Parameter("mixup", "uniform", 0.0, 0.4, limits=(0.0, 2.0), help="mixup's Beta parameter (0: off)"),
    Parameter("cutmix", "uniform", 0.0, 1.0, limits=(0.0, 2.0), help="CutMix's Beta parameter (0: off)"),
    # The high end becomes the backbone's number of freeze groups.
    Parameter("unfreeze_groups", "int", 1, None, limits=(1, None), help="freeze groups trained, from the top"),
    # The choices become the policy's candidate sizes for the data.
    Parameter("image_size", "categorical", choices=(), applies_to="both", help="input size in pixels"),
    Parameter("head_c", "log", 1e-3, 100.0, limits=(1e-6, 1e6), applies_to="linear",
              help="inverse regularisation strength of the linear heads"),
)}
DEFAULT_PARAMETERS = {
    "finetune": ("learning_rate", "backbone_learning_rate_multiplier", "weight_decay", "dropout", "label_smoothing",
                 "augment"),
    "linear": ("head_c",),
}


def parse_range(name: str, text: str):
    """`LOW:HIGH` (numbers) or `A,B,C` (choices) of the command line's --range NAME=..., as a `ranges` value."""
    parameter = _known(name)
    if parameter.kind == "categorical":
        choices = [item.strip() for item in text.split(",") if item.strip()]
        return [int(item) if item.isdigit() else item for item in choices]
    try:
        low, high = (float(item) for item in text.split(":"))
    except ValueError:
        raise FinetuneError(f"--range {name} takes LOW:HIGH, e.g. --range {name}={parameter.low or 0:g}:"
                            f"{parameter.high or 1:g}. Received: {name}={text}") from None
    return (low, high)


def _known(name: str) -> Parameter:
    if name not in PARAMETERS:
        raise FinetuneError(f"Unknown search parameter {name!r}. Allowed: {', '.join(PARAMETERS)}. "
                            f"Received: params={name!r}")
    return PARAMETERS[name]


def _with_range(parameter: Parameter, value) -> Parameter:
    if parameter.kind == "categorical":
        return dataclasses.replace(parameter, choices=tuple(value))
    low, high = (float(item) for item in value)
    floor, ceiling = parameter.limits
    if not low < high or (floor is not None and low < floor) or (ceiling is not None and high > ceiling) or \
            (parameter.kind == "log" and low <= 0):
        bounds = f"within [{floor}, {ceiling}]" + (" and above 0 (log scale)" if parameter.kind == "log" else "")
        raise FinetuneError(f"The range of {parameter.name} must have LOW < HIGH, {bounds}. "
                            f"Received: {parameter.name}={low:g}:{high:g}")
    return dataclasses.replace(parameter, low=int(low) if parameter.kind == "int" else low,
                               high=int(high) if parameter.kind == "int" else high)


def check_parameters(names, ranges: dict) -> None:
    """Raises a `FinetuneError` for an unknown name in `names` or `ranges`, or a range out of its limits."""
    for name in list(names) + list(ranges):
        parameter = _known(name)
        if name in ranges and parameter.kind != "categorical":
            _with_range(parameter, ranges[name])


def resolve_parameters(names, *, kind: str, ranges: dict | None = None, num_groups: int | None = None,
                       sizes: list[int] | None = None) -> list[Parameter]:
    """The parameters to search for a strategy of `kind` ("finetune" or "linear"), with their ranges resolved.

    Args:
        names: parameter names, or None for `DEFAULT_PARAMETERS[kind]`.
        kind: what the strategy trains: a parameter of the other kind is refused, naming the strategies it needs.
        ranges: replacements of the built-in ranges, by name.
        num_groups: the backbone's freeze groups (the top of `unfreeze_groups`).
        sizes: the candidate input sizes (the choices of `image_size`).
    """
    ranges = dict(ranges or {})
    names = list(DEFAULT_PARAMETERS[kind] if names is None else names)
    for name in ranges:
        if name not in names:
            raise FinetuneError(f"A range was given for {name!r}, which is not searched. Add it to --params "
                                f"(searched: {', '.join(names)}). Received: range {name}")
    resolved = []
    for name in names:
        parameter = _known(name)
        if parameter.applies_to not in (kind, "both"):
            needs = "a finetuning strategy" if parameter.applies_to == "finetune" else "a linear strategy"
            raise FinetuneError(f"{name} only applies to {needs}, and the search's strategy trains "
                                f"{'linear heads' if kind == 'linear' else 'by finetuning'}. Drop it from --params or "
                                f"choose --strategy accordingly. Received: params={name!r}")
        if name == "unfreeze_groups":
            parameter = dataclasses.replace(parameter, high=num_groups, limits=(1, num_groups))
        if name == "image_size":
            parameter = dataclasses.replace(parameter, choices=tuple(sizes or ()))
        if name in ranges:
            parameter = _with_range(parameter, ranges[name])
        resolved.append(parameter)
    return resolved


def apply_values(config: TrainConfig, values: dict) -> TrainConfig:
    """A copy of `config` with the sampled `values` in their fields."""
    config = TrainConfig.from_dict(config.to_dict())
    for name, value in values.items():
        if name == "dropout":
            config.model.dropout = float(value)
        elif name == "image_size":
            config.data.image_size = int(value)
        elif name in ("mixup", "cutmix"):
            config.augment_options = {**config.augment_options, name: float(value)}
        elif name == "head_c":
            config.head_c_grid = (float(value),)
        elif name == "augment":
            config.augment = str(value)
        elif name == "unfreeze_groups":
            config.unfreeze_groups = int(value)
        else:
            setattr(config, name, float(value))
    return config


def narrow(parameters: list[Parameter], best_values: list[dict], widen_share: float) -> list[Parameter]:
    """The fine stage's ranges: each parameter's range around its values in `best_values` (the best coarse trials)."""
    if not best_values:
        return list(parameters)
    return [parameter.narrowed([values[parameter.name] for values in best_values if parameter.name in values]
                               or [parameter.low, parameter.high], widen_share)
            if parameter.kind != "categorical" or any(parameter.name in values for values in best_values)
            else parameter for parameter in parameters]


def edge_warnings(parameters: list[Parameter], values: dict, share: float) -> list[dict]:
    """For each numeric parameter whose best value lies in the outer `share` of its range: the warning, and a range to try."""
    warnings = []
    for parameter in parameters:
        if parameter.kind == "categorical" or parameter.name not in values or parameter.high == parameter.low:
            continue
        position = parameter.position(values[parameter.name])
        side = "low" if position <= share else "high" if position >= 1 - share else None
        if side is None:
            continue
        wider = parameter.widened(side)
        scale = " (log scale)" if parameter.kind == "log" else ""
        message = (f"{parameter.name}: the best value {values[parameter.name]:.4g} lies in the "
                   f"{'bottom' if side == 'low' else 'top'} {share:.0%} of its range [{parameter.low:g}, "
                   f"{parameter.high:g}]{scale}: the best may lie beyond it. ")
        message += (f"Search again with --range {parameter.name}={wider.range_text()}." if wider else
                    f"The range already ends at the limit of {parameter.name} there.")
        warnings.append({"parameter": parameter.name, "value": values[parameter.name], "side": side,
                         "range": [parameter.low, parameter.high],
                         "wider": None if wider is None else [wider.low, wider.high], "message": message})
    return warnings


def default_values(parameters: list[Parameter], config: TrainConfig, *, augment_preset: str | None,
                   unfreeze_groups: int | None) -> dict:
    """The values `config` trains with, for the parameters whose ranges hold them: the search's first trial."""
    current = {
        "learning_rate": config.learning_rate,
        "backbone_learning_rate_multiplier": config.backbone_learning_rate_multiplier,
        "weight_decay": config.weight_decay,
        "dropout": config.model.dropout,
        "label_smoothing": config.label_smoothing,
        "augment": augment_preset,
        "mixup": config.augment_options.get("mixup", 0.0),
        "cutmix": config.augment_options.get("cutmix", 0.0),
        "unfreeze_groups": unfreeze_groups,
        "image_size": config.data.image_size,
    }
    return {parameter.name: current[parameter.name] for parameter in parameters
            if parameter.name in current and parameter.contains(current[parameter.name])}
