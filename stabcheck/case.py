"""A ``Case``: one loss, one format and the exact inputs, validated and replayable.

Inputs are cast to the format the way numpy casts; from then on they are exact binary
values, and the oracle works from those. A case serialises to JSON with every float as an
exact hex string (``float.hex``), so a failure can be pasted back in and replayed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stabcheck.errors import InvalidArgument, did_you_mean
from stabcheck.formats import FORMATS, Format, get_format
from stabcheck.losses import (
    OPERANDS,
    InputKind,
    LabelKind,
    LossSpec,
    ParamKind,
    ParamSpec,
    get_loss,
    get_param,
)


@dataclass(frozen=True, eq=False)
class Case:
    """Validated inputs of one loss evaluation.

    ``predictions`` and float ``labels`` are arrays of the format's dtype; sparse labels
    are ``int64``. Rowwise losses always hold 2-D predictions (N x C); a single row given
    as a 1-D array becomes 1 x C. ``params`` holds the options given (see
    ``stabcheck.losses.PARAMS``): reals as values of the format (Python floats), class
    weights as an array of the format, ``ignore_index`` an int, ``reduction`` a name;
    ``param(name)`` gives an option's value or its default. ``operands`` holds the loss's
    other inputs (``LossSpec.operands``: the classifier ``linear_weight`` W, V x D, and
    ``linear_bias`` b, V, of the linear losses, whose predictions are the hidden states h,
    N x D), arrays of the format.
    """

    loss: LossSpec
    format: Format
    predictions: np.ndarray
    labels: np.ndarray
    params: Mapping[str, Any] = field(default_factory=dict)
    regime: str = "manual"
    operands: Mapping[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        loss: str | LossSpec,
        predictions: Any,
        labels: Any,
        format: str | Format = "float64",
        regime: str = "manual",
        **params: Any,
    ) -> Case:
        """Validate and cast the inputs of ``loss``; raise ``InvalidArgument`` if they are bad.
        ``params`` holds the options and the operands (``linear_weight=``, ``linear_bias=``)."""
        spec, fmt = get_loss(loss), get_format(format)
        preds = _float_array("predictions", predictions, fmt)
        if spec.rowwise:
            preds = _rows(preds)
        operands = _operands(spec, fmt, params, preds.shape)
        classes = operands["linear_weight"].shape[0] if operands else preds.shape[-1]
        checked = _params(spec, fmt, {k: v for k, v in params.items() if k not in spec.operands},
                          classes)  # fmt: skip
        rows = (preds.shape[0], classes)
        if spec.labels is LabelKind.SPARSE:
            labs = _sparse_labels(labels, rows, checked.get("ignore_index"))
        else:
            labs = _float_array("labels", labels, fmt)
            if spec.rowwise and labs.ndim == 1:
                labs = labs.reshape(1, -1)
            shape = rows if spec.rowwise else preds.shape
            if labs.shape != shape:
                raise InvalidArgument(
                    f"labels has shape {labs.shape} but there are {shape} predictions; "
                    f"{spec.name} takes {spec.labels.value} labels, one per class and row"
                    if operands else
                    f"labels has shape {labs.shape} but predictions has shape {preds.shape}; "
                    f"{spec.name} takes {spec.labels.value} labels shaped like the predictions"
                )  # fmt: skip
            _check_unit_interval("labels", labs, allow_nan=False)
        if spec.inputs is InputKind.PROBABILITIES:
            _check_unit_interval("predictions", preds, allow_nan=True)
        return cls(spec, fmt, preds, labs, checked, regime, operands)

    def param(self, name: str) -> Any:
        """The value of option ``name``: as given, else its default (None: off)."""
        return self.params.get(name, get_param(name).default)

    @property
    def classes(self) -> int:
        """The number of classes: the rows of W for the linear losses, else the
        predictions' last axis."""
        weight = self.operands.get("linear_weight")
        return int(weight.shape[0]) if weight is not None else int(self.predictions.shape[-1])

    # -- the shape of the answer ---------------------------------------------------------

    @property
    def reduced(self) -> bool:
        """Whether the loss is reduced to one number (``reduction`` other than ``none``)."""
        return self.param("reduction") != "none"

    @property
    def output_shape(self) -> tuple[int, ...]:
        """The shape of the loss: () when reduced, else one per row (rowwise) or element."""
        if self.reduced:
            return ()
        return self.predictions.shape[:1] if self.loss.rowwise else self.predictions.shape

    def unit(self, index: tuple[int, ...]) -> Case:
        """The one row (rowwise) or element that output ``index`` comes from, as a case;
        a reduced case is its own unit (the reduction couples its rows)."""
        if self.reduced:
            return self
        if self.loss.rowwise:
            pick = slice(index[0], index[0] + 1)
            preds, labels = self.predictions[pick], self.labels[pick]
        else:
            preds = self.predictions[tuple(index)].reshape(1)
            labels = self.labels[tuple(index)].reshape(1)
        return Case(self.loss, self.format, preds, labels, dict(self.params), self.regime,
                    self.operands)  # fmt: skip

    # -- serialisation -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        sparse = self.loss.labels is LabelKind.SPARSE
        return {
            "loss": self.loss.name,
            "format": self.format.name,
            "predictions": _hex(self.predictions),
            **{name: _hex(array) for name, array in self.operands.items()},
            "labels": self.labels.tolist() if sparse else _hex(self.labels),
            "params": {k: _param_json(get_param(k), v) for k, v in sorted(self.params.items())},
            "regime": self.regime,
        }

    def to_json(self) -> str:
        """The case as one line of JSON, floats as exact hex strings."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | Mapping[str, Any]) -> Case:
        """Replay a case written by ``to_json``; ``InvalidArgument`` says what is wrong with
        anything else."""
        example = ('e.g. {"loss":"binary_crossentropy","format":"float32",'
                   '"predictions":["0x1p-30"],"labels":["0x1p-1"]}')  # fmt: skip
        try:
            data = json.loads(text) if isinstance(text, (str, bytes)) else text
        except ValueError as exc:
            raise InvalidArgument(f"a case is JSON, and this is not ({exc}); {example}") from None
        if not isinstance(data, Mapping):
            raise InvalidArgument(
                f"a case is a JSON object, not a {type(data).__name__}; {example}"
            )
        missing = [key for key in ("loss", "predictions", "labels") if key not in data]
        if missing:
            raise InvalidArgument(f"the case has no {missing[0]!r}; {example}")
        params = data.get("params", {})
        if not isinstance(params, Mapping):
            raise InvalidArgument(f"params={params!r} must be an object such as "
                                  '{"pos_weight": "0x1.8p+1", "reduction": "mean"}')  # fmt: skip
        for key in ("loss", "format", "regime"):
            if key in data and not isinstance(data[key], str):
                raise InvalidArgument(f"{key}={data[key]!r} must be a string")
        operands = {k: parse_floats(v) for k, v in data.items() if k in _OPERAND_NAMES}
        return cls.build(
            data["loss"],
            parse_floats(data["predictions"]),
            parse_floats(data["labels"]),
            format=data.get("format", "float64"),
            regime=data.get("regime", "manual"),
            **operands,
            **{str(k): v if isinstance(v, str) and not _numeric(v) else parse_floats(v)
               for k, v in params.items()},
        )

    @functools.cached_property
    def id(self) -> str:
        """A short stable identifier: a hash of the loss, format, inputs and parameters."""
        payload = {k: v for k, v in self.to_dict().items() if k != "regime"}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]

    def cli(self) -> str:
        """A ``stabcheck oracle`` command line that recomputes this case exactly."""
        d = self.to_dict()
        args = [
            "stabcheck oracle",
            d["loss"],
            f"--predictions '{json.dumps(d['predictions'], separators=(',', ':'))}'",
            f"--labels '{json.dumps(d['labels'], separators=(',', ':'))}'",
            f"--format {d['format']}",
        ]
        for name in self.operands:
            text = json.dumps(d[name], separators=(",", ":"))
            args.append(f"--{name.replace('_', '-')} '{text}'")
        for k, v in d["params"].items():
            text = json.dumps(v, separators=(",", ":")) if isinstance(v, list) else str(v)
            args.append(f"--{k.replace('_', '-')} {shlex.quote(text)}")
        return " ".join(args)

    def __repr__(self) -> str:
        return f"Case.from_json({self.to_json()!r})"


def parse_floats(value: Any) -> Any:
    """Nested lists of numbers or hex strings ('0x1.8p+1', 'inf', 'nan') to floats."""
    if isinstance(value, list):
        return [parse_floats(v) for v in value]
    if isinstance(value, str):
        try:
            return float.fromhex(value) if "0x" in value.lower() else float(value)
        except ValueError:
            raise InvalidArgument(
                f"{value!r} is not a number; write decimals, or hex floats such as '0x1.8p+1'"
            ) from None
        except OverflowError:
            raise InvalidArgument(
                f"{value!r} is beyond float64 (largest 0x1.fffffffffffffp+1023); write 'inf' "
                "for an infinity, or a hex float in range"
            ) from None
    return value


def _hex(array: np.ndarray) -> Any:
    flat = [v.hex() for v in array.astype(np.float64).ravel().tolist()]
    return np.array(flat, dtype=object).reshape(array.shape).tolist()


def _float_array(name: str, values: Any, fmt: Format) -> np.ndarray:
    try:
        array = np.asarray(parse_floats(values) if isinstance(values, (list, str)) else values)
    except ValueError as exc:
        raise InvalidArgument(f"{name} is not a rectangular array of numbers: {exc}") from None
    if array.dtype.kind not in "biuf" and array.dtype not in {f.dtype for f in FORMATS}:
        raise InvalidArgument(
            f"{name} has dtype {array.dtype}; it must hold real numbers (ints or floats)"
        )
    if array.size == 0:
        raise InvalidArgument(f"{name} is empty; give at least one value")
    return fmt.asarray(np.atleast_1d(array))


def _rows(preds: np.ndarray) -> np.ndarray:
    if preds.ndim == 1:
        return preds.reshape(1, -1)
    if preds.ndim != 2:
        raise InvalidArgument(
            f"predictions has shape {preds.shape}; rowwise losses take N x C predictions "
            "(or one row of C)"
        )
    return preds


def _check_unit_interval(name: str, array: np.ndarray, *, allow_nan: bool) -> None:
    values = array.astype(np.float64)
    bad = ~((values >= 0) & (values <= 1))
    if allow_nan:
        bad &= ~np.isnan(values)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        what = "probabilities" if name == "predictions" else "labels"
        raise InvalidArgument(
            f"{name}[{', '.join(map(str, index))}]={float(values[index])!r} is outside [0, 1]; "
            f"{what} must lie in [0, 1]" + ("" if allow_nan else " and must not be NaN")
        )


def _sparse_labels(labels: Any, shape: tuple[int, ...], ignore: int | None) -> np.ndarray:
    array = np.atleast_1d(np.asarray(parse_floats(labels) if isinstance(labels, list) else labels))
    n, classes = shape
    if array.shape != (n,):
        raise InvalidArgument(
            f"labels has shape {array.shape} but predictions has {n} rows; sparse labels are "
            f"one integer class index per row, shape ({n},)"
        )
    if array.dtype.kind == "f":
        bad = ~np.isfinite(array) | (array != np.round(array))
        if bad.any():
            i = int(np.argmax(bad))
            raise InvalidArgument(
                f"labels[{i}]={float(array[i])!r} is not an integer class index; sparse labels "
                f"are integers in [0, {classes})"
            )
    elif array.dtype.kind not in "iub":
        raise InvalidArgument(f"labels has dtype {array.dtype}; sparse labels are integers")
    bad = (array < 0) | (array >= classes)
    if ignore is not None:
        bad &= array != ignore
    if bad.any():
        i = int(np.argmax(bad))
        value = array[i].item()
        also = "" if ignore is None else f" or ignore_index={ignore}"
        raise InvalidArgument(
            f"labels[{i}]={value!r} is out of range for {classes} classes; sparse labels "
            f"are integers in [0, {classes}){also}"
        )
    return array.astype(np.int64)


def _operands(spec: LossSpec, fmt: Format, given: Mapping[str, Any],
              shape: tuple[int, ...]) -> dict[str, np.ndarray]:  # fmt: skip
    """The operands of ``spec`` in ``given``, cast to ``fmt`` and shaped as their specs say
    (``features``: the predictions' last axis, ``classes``: the rows of the first)."""
    out: dict[str, np.ndarray] = {}
    for operand in spec.operand_specs:
        value = given.get(operand.name)
        if value is None:
            if operand.required:
                raise InvalidArgument(
                    f"{spec.name} needs {operand.name}=..., {operand.summary}"
                )
            continue
        array = _float_array(operand.name, value, fmt)
        sizes = {"features": shape[-1]}
        if out:
            sizes["classes"] = next(iter(out.values())).shape[0]
        if operand.shape[0] == "classes" and "classes" not in sizes:
            sizes["classes"] = array.shape[0]
        want = tuple(sizes[axis] for axis in operand.shape)
        if array.shape != want:
            axes = " x ".join(f"{axis} ({sizes[axis]})" for axis in operand.shape)
            raise InvalidArgument(
                f"{operand.name} has shape {array.shape}; it must be {axes}: "
                f"{operand.summary}, with the predictions' {shape[-1]} features"
            )
        out[operand.name] = array
    return out


_OPERAND_NAMES = {spec.name for spec in OPERANDS}


def _params(spec: LossSpec, fmt: Format, params: Mapping[str, Any], classes: int) -> dict:
    """The options of ``spec`` checked against their specs; reals cast to ``fmt``."""
    unknown = sorted(set(params) - set(spec.params))
    if unknown:
        takes = ", ".join(spec.params) or "no parameters"
        raise InvalidArgument(
            f"{spec.name} got unknown parameter {unknown[0]}=...; it takes {takes}"
        )
    out: dict[str, Any] = {}
    for param in spec.param_specs:
        value = params.get(param.name)
        if value is None:
            if param.required:
                raise InvalidArgument(f"{spec.name} needs {param.name}=..., {param.domain}")
            continue
        out[param.name] = check_param(param, value, fmt, classes)
    return out


def check_param(param: ParamSpec, value: Any, fmt: Format, classes: int) -> Any:
    """``value`` of option ``param`` checked against its domain (reals cast to ``fmt``,
    class weights as an array of ``fmt`` of length ``classes``), or ``InvalidArgument``
    naming the value and the fix."""
    name, fix = param.name, f"it must be {param.domain}"
    if param.kind is ParamKind.CHOICE:
        if value not in param.choices:
            raise InvalidArgument(
                f"{name}={value!r} is not valid; {fix}.{did_you_mean(value, param.choices)}"
            )
        return value
    if param.kind is ParamKind.INDEX:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer, float)) or (
            isinstance(value, float) and not value.is_integer()
        ):
            raise InvalidArgument(f"{name}={value!r} is not valid; {fix}")
        return int(value)
    if param.kind is ParamKind.VECTOR:
        array = _float_array(name, value, fmt).reshape(-1)
        if array.shape != (classes,):
            raise InvalidArgument(
                f"{name} has {array.size} entries but there are {classes} classes; {fix}"
            )
        values = array.astype(np.float64)
        bad = ~((values >= param.low) & np.isfinite(values))
        if bad.any():
            i = int(np.argmax(bad))
            raise InvalidArgument(f"{name}[{i}]={float(values[i])!r} is not valid; {fix}")
        return array
    try:
        number = float(fmt.asarray(float(value))) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    low_ok = number > param.low if param.open_low else number >= param.low
    if not (math.isfinite(number) and low_ok and number <= param.high):
        raise InvalidArgument(
            f"{name}={value!r} is not valid; {fix} (in {fmt.name}, where it is {number!r})"
        )
    return number


def _param_json(param: ParamSpec, value: Any) -> Any:
    if param.kind is ParamKind.REAL:
        return float(value).hex()
    if param.kind is ParamKind.VECTOR:
        return _hex(value)
    return value


def _numeric(text: str) -> bool:
    try:
        parse_floats(text)
    except InvalidArgument:
        return False
    return True
