"""One source of defaults per knob: every CLI flag's default is its config field's default."""

from __future__ import annotations

from dataclasses import asdict, fields

from dnas_prune.cli import build_parser
from dnas_prune.cli import finetune as finetune_cli
from dnas_prune.cli import search as search_cli
from dnas_prune.cli import train as train_cli
from dnas_prune.cli.common import train_config_from
from dnas_prune.config import SCHEMA
from dnas_prune.search.pruner import BUDGET_FIELDS, SearchConfig


def parse(*argv: str):
    return build_parser().parse_args(list(argv))


def test_search_flags_default_to_the_search_config() -> None:
    args = parse("search", "--model", "cifar_resnet20", "--target-macs", "0.5", "--out", "x")
    assert search_cli.search_config_from(args) == SearchConfig(metric="macs", target=0.5)
    assert train_config_from(args) == search_cli.DEFAULTS
    for flag, value in (("--block-gates", True), ("--no-block-gates", False)):
        args = parse("search", "--model", "cifar_resnet20", "--target-latency", "0.5", flag, "--out", "x")
        assert search_cli.search_config_from(args).block_gates is value
    for flag, value in (("--close-thin-blocks", True), ("--no-close-thin-blocks", False)):
        args = parse("search", "--model", "cifar_resnet20", "--target-latency", "0.5", flag, "--out", "x")
        assert search_cli.search_config_from(args).close_thin_blocks is value
    # by default thin blocks close under a latency budget only, and only where blocks are gated
    assert SearchConfig(metric="latency").closes_thin_blocks
    assert not SearchConfig(metric="latency", block_gates=False).closes_thin_blocks
    assert not SearchConfig(metric="macs", block_gates=True).closes_thin_blocks
    assert SearchConfig(metric="macs", block_gates=True, close_thin_blocks=True).closes_thin_blocks


def test_train_and_finetune_flags_default_to_their_recipes() -> None:
    args = parse("train", "--model", "cifar_resnet20")
    expected = asdict(train_cli.DEFAULTS) | {"clean_epochs": train_cli.DEFAULTS.epochs // train_cli.CLEAN_EPOCHS_PER}
    assert asdict(train_config_from(args)) == expected
    args = parse("finetune", "pruned.pt", "--out", "x")
    assert train_config_from(args) == finetune_cli.DEFAULTS


def test_every_search_field_is_a_toml_key_with_the_same_default() -> None:
    defaults = SearchConfig()
    for f in fields(SearchConfig):
        if f.name not in BUDGET_FIELDS:  # the budget: one of the target_* keys
            assert SCHEMA["search"][f.name] == getattr(defaults, f.name), f.name
    for kind in ("macs", "params", "latency", "latency_ms"):
        assert SCHEMA["search"][f"target_{kind}"] is None, kind
