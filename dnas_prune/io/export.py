"""Export a (pruned) model to TorchScript, ONNX or a ``torch.export`` archive, and check the result.

Each export is written to a temp file next to the target and renamed into place, then (by default) loaded
back and run on a random batch of a different size than the traced one, so a wrongly baked-in batch
dimension or a numerical divergence is caught at export time rather than in deployment.
"""

from __future__ import annotations

import importlib.util
import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..errors import DnasPruneError
from ..models.cost import check_input_size
from ..models.spec import SpecError, spec_of
from .checkpoint import atomic_output
from .pruned import default_input_size

FORMATS = ("torchscript", "onnx", "pt2")
SUFFIXES = {"torchscript": ".torchscript", "onnx": ".onnx", "pt2": ".pt2"}
# Where an export keeps what a deployment needs besides the graph (classes, preprocessing, input size), as JSON:
# ONNX metadata_props[INFO_KEY]; TorchScript and pt2 archives, extra file INFO_FILE. read_export_info reads it.
INFO_KEY, INFO_FILE = "dnas_prune", "dnas_prune.json"
_INSTALL_HINT = 'pip install "dnas_prune[export]"'


class ExportError(DnasPruneError):
    """An unknown format, a missing optional dependency, or an export whose outputs differ from the model."""


def _check_format(format: str) -> None:
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; choose one of: {', '.join(FORMATS)}")


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _export_torchscript(model: nn.Module, example: torch.Tensor, path: Path, dynamic_batch: bool, info: str) -> None:
    with warnings.catch_warnings():  # torch.jit is deprecated upstream; the user asked for this format anyway
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(model, (example,), check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={INFO_FILE: info})


def _export_pt2(model: nn.Module, example: torch.Tensor, path: Path, dynamic_batch: bool, info: str) -> None:
    dynamic_shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    program = torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes)
    torch.export.save(program, str(path), extra_files={INFO_FILE: info})


def _onnxscript_available() -> bool:
    return importlib.util.find_spec("onnxscript") is not None


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path, dynamic_batch: bool, info: str) -> None:
    """The torch.export-based exporter when onnxscript is installed, else the legacy TorchScript one; ``info``
    goes into the model's ``metadata_props``."""
    names = {"input_names": ["input"], "output_names": ["logits"]}
    if _onnxscript_available():
        dynamic_shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
        torch.onnx.export(
            model, (example,), str(path), dynamo=True, external_data=False, verbose=False,
            dynamic_shapes=dynamic_shapes, **names,
        )
    else:
        dynamic_axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
        with warnings.catch_warnings():  # the legacy exporter warns that it is deprecated
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(model, (example,), str(path), dynamo=False, dynamic_axes=dynamic_axes, **names)
    onnx = _onnx_module()
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = INFO_KEY, info
    onnx.save(proto, str(path))


_EXPORTERS: dict[str, Callable[[nn.Module, torch.Tensor, Path, bool, str], None]] = {
    "torchscript": _export_torchscript,
    "onnx": _export_onnx,
    "pt2": _export_pt2,
}


def check_written(path: Path, model: nn.Module, format: str, input_size: Sequence[int], batch_size: int,
                  dynamic_batch: bool) -> dict[str, Any]:
    """:func:`verify_export` of the file :func:`export` wrote, with ``dynamic_batch`` at one more than the batch it
    was traced with (at least 2), so a batch dimension baked into the graph fails; a file that fails (or does not
    finish) its check is deleted, so it never counts as done."""
    try:
        return verify_export(path, model, format, input_size, max(2, batch_size) + 1 if dynamic_batch else batch_size)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _check_inputs(model: nn.Module, input_size: Sequence[int], batch_size: int) -> None:
    try:
        check_input_size(model, input_size)
    except DnasPruneError as exc:
        raise ExportError(str(exc)) from None
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ExportError(f"the export's batch size must be a positive whole number, got {batch_size!r}")
    other = {p.dtype for p in model.parameters() if p.is_floating_point()} - {torch.float32}
    if other:
        raise ExportError(f"export takes a float32 model; this one has {', '.join(map(str, sorted(other, key=str)))} "
                          "weights: export model.float()")


def export(
    model: nn.Module,
    path: str | os.PathLike[str],
    format: str = "onnx",
    input_size: Sequence[int] | None = None,
    batch_size: int = 1,
    dynamic_batch: bool = True,
    check: bool = True,
    info: dict[str, Any] | None = None,
) -> Path:
    """Export ``model`` (run in eval mode) to ``path`` in ``format``; with ``check``, verify it reproduces the model.

    ``input_size`` defaults to the family's usual one (CIFAR 32x32, torchvision 224x224). ``batch_size`` is the
    traced batch; with ``dynamic_batch`` the exported graph accepts any batch size (``torch.export`` specializes
    size-1 dimensions, so tracing then uses a batch of at least 2). ``info`` (JSON-able: a model file's
    ``classes`` and ``preprocess``) is stored in the export with its input size; :func:`read_export_info` reads it.
    """
    _check_format(format)
    if input_size is None:
        try:
            input_size = default_input_size(spec_of(model))
        except SpecError:
            raise ExportError("not a ResNet dnas_prune can describe: give export() its input_size=(C, H, W)") from None
    input_size = tuple(input_size)
    _check_inputs(model, input_size, batch_size)
    path = Path(path)
    trace_batch = max(2, batch_size) if dynamic_batch else batch_size
    example = torch.randn(trace_batch, *input_size, device=_device(model))
    was_training = model.training
    model.eval()
    try:
        text = json.dumps({**(info or {}), "input_size": list(input_size), "input": "input", "output": "logits"})
        with atomic_output(path) as tmp, torch.no_grad():
            _EXPORTERS[format](model, example, tmp, dynamic_batch, text)
    finally:
        model.train(was_training)
    if check:
        check_written(path, model, format, input_size, batch_size, dynamic_batch)
    return path


def read_export_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What :func:`export` stored beside the graph (classes, preprocess, input size, tensor names), whatever the
    file is named: TorchScript and pt2 files are zip archives holding it as ``<name>/extra/dnas_prune.json``,
    ONNX keeps it in ``metadata_props``. ``{}`` for an export that has none."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            entry = next((n for n in archive.namelist() if n.endswith(f"/extra/{INFO_FILE}")), None)
            return json.loads(archive.read(entry)) if entry else {}
    onnx = _onnx_module()
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return json.loads(props.get(INFO_KEY, "{}"))


def _onnx_module() -> Any:
    try:
        import onnx
    except ImportError:
        raise ExportError(f"ONNX files need the onnx package; {_INSTALL_HINT}") from None
    return onnx


def _onnx_runner(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        import onnxruntime
    except ImportError:
        raise ExportError(f"checking an ONNX export needs onnxruntime; {_INSTALL_HINT}") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {input_name: x.cpu().numpy()})[0])


def _load_runner(path: Path, format: str, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    if format == "onnx":
        return _onnx_runner(path)
    if format == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(path), map_location=device)
    return torch.export.load(str(path)).module()


def verify_export(
    path: str | os.PathLike[str],
    model: nn.Module,
    format: str,
    input_size: Sequence[int] = (3, 32, 32),
    batch_size: int = 2,
) -> dict[str, Any]:
    """Run the exported file and ``model`` on one random batch; raise :class:`ExportError` if they differ.

    The tolerance is relative to the logits' scale: ``1e-4 * max|logit| + 1e-5``.
    """
    _check_format(format)
    path = Path(path)
    device = _device(model)
    x = torch.randn(batch_size, *input_size, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = model(x).float().cpu()
            got = _load_runner(path, format, device)(x).float().cpu()
    finally:
        model.train(was_training)
    if got.shape != expected.shape:
        raise ExportError(f"{path}: exported model returns shape {tuple(got.shape)}, the model {tuple(expected.shape)}")
    max_abs_diff = (got - expected).abs().max().item()
    tolerance = 1e-4 * expected.abs().max().item() + 1e-5
    if not max_abs_diff <= tolerance:
        raise ExportError(
            f"{path}: exported {format} model differs from the original by {max_abs_diff:.3g} (tolerance {tolerance:.3g})"
        )
    return {"format": format, "batch_size": batch_size, "max_abs_diff": max_abs_diff, "tolerance": tolerance}
