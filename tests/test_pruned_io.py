import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from dnas_prune.models.cost import count_cost
from dnas_prune.errors import CheckpointError
from dnas_prune.models import build_model, create_model, spec_of
from dnas_prune.io.pruned import load_pruned, load_pruned_with_metadata, save_pruned

PRUNED_SPEC = {
    "format": 1, "family": "cifar", "block": "basic", "num_classes": 10, "stem": 8,
    "stages": [
        {"width": 8, "stride": 1, "blocks": [{"inner": [3], "downsample": False}]},
        {"width": 12, "stride": 2, "blocks": [{"inner": None, "downsample": True}, {"inner": [5], "downsample": False}]},
        {"width": 12, "stride": 1, "blocks": []},
    ],
}


def _randomize_bn(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BN statistics, so a round trip that drops buffers would show."""
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture
def pruned_file(tmp_path: Path) -> Path:
    model = _randomize_bn(build_model(PRUNED_SPEC))
    return save_pruned(model, tmp_path / "pruned.pt", dataset="cifar10", accuracy=0.5)


@pytest.mark.subprocess
def test_roundtrip_in_fresh_process(tmp_path: Path, pruned_file: Path) -> None:
    model = load_pruned(pruned_file)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.save(x, tmp_path / "x.pt")
    expected = model(x)
    script = textwrap.dedent(
        f"""
        import torch
        from dnas_prune.io.pruned import load_pruned
        model = load_pruned({str(pruned_file)!r})
        assert not model.training
        with torch.no_grad():
            torch.save(model(torch.load({str(tmp_path / "x.pt")!r})), {str(tmp_path / "y.pt")!r})
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    assert torch.equal(torch.load(tmp_path / "y.pt"), expected.detach())


def test_pruned_spec_and_metadata_roundtrip(pruned_file: Path) -> None:
    model, metadata = load_pruned_with_metadata(pruned_file)
    assert spec_of(model) == PRUNED_SPEC
    cost = count_cost(model, (3, 32, 32))
    assert (metadata["macs"], metadata["params"]) == (cost.macs, cost.params)
    assert metadata["input_size"] == [3, 32, 32]
    assert metadata["dataset"] == "cifar10" and metadata["accuracy"] == 0.5
    assert not any(p.is_meta for p in model.parameters())


def test_torchvision_family_uses_given_input_size(tmp_path: Path) -> None:
    model = create_model("resnet18", num_classes=5)
    path = save_pruned(model, tmp_path / "r18.pt", input_size=(3, 64, 64))
    loaded, metadata = load_pruned_with_metadata(path)
    assert metadata["macs"] == count_cost(loaded, (3, 64, 64)).macs
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(loaded(x), model.eval()(x))


def test_save_leaves_no_temp_files(tmp_path: Path, pruned_file: Path) -> None:
    assert [p.name for p in tmp_path.iterdir()] == ["pruned.pt"]


def _assert_one_line_error(path: Path, *fragments: str) -> None:
    with pytest.raises(CheckpointError) as info:
        load_pruned(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    for fragment in fragments:
        assert fragment in message


def test_missing_and_empty(tmp_path: Path) -> None:
    _assert_one_line_error(tmp_path / "nope.pt", "no such file")
    (tmp_path / "empty.pt").write_bytes(b"")
    _assert_one_line_error(tmp_path / "empty.pt", "empty")


def test_truncated_and_garbage(tmp_path: Path, pruned_file: Path) -> None:
    data = pruned_file.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    _assert_one_line_error(tmp_path / "cut.pt", "truncated")
    (tmp_path / "junk.pt").write_bytes(os.urandom(4096))
    _assert_one_line_error(tmp_path / "junk.pt")


@pytest.mark.parametrize(
    "payload, fragment",
    [
        (lambda: create_model("cifar_resnet20").state_dict(), "plain state_dict"),
        (lambda: {"format": "dnas_prune.search", "version": 1, "supernet": {}}, "dnas_prune.search"),
        (lambda: {"format": 1, "kind": "dnas_prune.trainer", "model": {}, "optimizer": {}}, "'dnas_prune.trainer'"),
        (lambda: {"model": {}, "optimizer": {}, "epoch": 3}, "training checkpoint"),
        (lambda: [1, 2, 3], "list"),
    ],
)
def test_foreign_files(tmp_path: Path, payload, fragment: str) -> None:
    torch.save(payload(), tmp_path / "other.pt")
    _assert_one_line_error(tmp_path / "other.pt", fragment, "not a pruned model")


def test_newer_version(tmp_path: Path, pruned_file: Path) -> None:
    obj = torch.load(pruned_file, weights_only=True)
    obj["version"] = 99
    torch.save(obj, tmp_path / "new.pt")
    _assert_one_line_error(tmp_path / "new.pt", "newer", "upgrade")


def test_spec_tensor_mismatch_names_key(tmp_path: Path, pruned_file: Path) -> None:
    obj = torch.load(pruned_file, weights_only=True)
    obj["spec"]["stages"][0]["blocks"][0]["inner"] = [4]
    torch.save(obj, tmp_path / "shape.pt")
    _assert_one_line_error(tmp_path / "shape.pt", "layer1.0.conv1.weight")
    obj = torch.load(pruned_file, weights_only=True)
    del obj["state_dict"]["fc.bias"]
    torch.save(obj, tmp_path / "missing.pt")
    _assert_one_line_error(tmp_path / "missing.pt", "fc.bias")
    obj = torch.load(pruned_file, weights_only=True)
    obj["state_dict"]["extra.weight"] = torch.zeros(1)
    torch.save(obj, tmp_path / "extra.pt")
    _assert_one_line_error(tmp_path / "extra.pt", "extra.weight")
    obj = torch.load(pruned_file, weights_only=True)
    obj["spec"]["stem"] = 0
    torch.save(obj, tmp_path / "badspec.pt")
    _assert_one_line_error(tmp_path / "badspec.pt", "spec")


class _Payload:
    """Stands in for a malicious object: unpickling it would create the marker file."""

    marker: str = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_code_payload_is_refused_without_running(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    _Payload.marker = str(marker)
    obj = {"format": "dnas_prune.pruned", "version": 1, "spec": _Payload()}
    path = tmp_path / "evil.pt"
    if writer == "torch":
        torch.save(obj, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(obj, f)
    _assert_one_line_error(path, "refused")
    assert not marker.exists()


@pytest.mark.parametrize("corrupt", [
    lambda obj: obj["spec"].update(stages="abc"),
    lambda obj: obj["spec"].update(stages=[None]),
    lambda obj: obj["spec"]["stages"][0].update(blocks=None),
    lambda obj: obj["state_dict"].update({"fc.weight": obj["state_dict"]["fc.weight"].long()}),
])
def test_a_spec_or_tensor_of_the_wrong_type_is_one_line(tmp_path: Path, corrupt) -> None:
    path = save_pruned(create_model("cifar_resnet20"), tmp_path / "pruned.pt")
    obj = torch.load(path, weights_only=True)
    corrupt(obj)
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match="the file is corrupt") as info:
        load_pruned(path)
    assert "\n" not in str(info.value)
