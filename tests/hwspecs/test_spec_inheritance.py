"""``base:`` inheritance: deep merge, null deletes, relative paths, names, and what the child
changes."""

from __future__ import annotations

from pathlib import Path

import yaml

from mpqc import hwspecs
from mpqc.hwspecs.loader import deep_merge


def write(path: Path, document: dict) -> Path:
    path.write_text(yaml.safe_dump(document))
    return path


def test_deep_merge_merges_mappings_replaces_the_rest_and_null_deletes() -> None:
    base = {"a": {"x": 1, "y": 2}, "l": [1, 2], "gone": 3, "keep": 4}
    merged = deep_merge(base, {"a": {"y": 5, "z": 6}, "l": [9], "gone": None})
    assert merged == {"a": {"x": 1, "y": 5, "z": 6}, "l": [9], "keep": 4}
    assert base == {"a": {"x": 1, "y": 2}, "l": [1, 2], "gone": 3, "keep": 4}, (
        "inputs are not mutated"
    )


def test_child_overrides_a_few_fields_of_a_bundled_base(tmp_path: Path) -> None:
    child = write(
        tmp_path / "fast_avx2.yaml",
        {
            "base": "x86_avx2",
            "precisions": {"float": {"throughput": "96 GMAC/s"}, "w2a8": None},
            "memory": {"dram": {"bandwidth": "20 GB/s"}},
        },
    )
    spec = hwspecs.load(child)
    base = hwspecs.load("x86_avx2")
    assert spec.name == "fast_avx2"
    assert spec.description == base.description
    assert spec.precision(None, None).throughput == 96e9
    assert spec.precision(None, None).energy_per_mac == base.precision(None, None).energy_per_mac
    assert spec.precision(4, 8) == base.precision(4, 8), (
        "an emulated pair with its own numbers keeps them"
    )
    assert not spec.supports(2, 8) and base.supports(2, 8)
    assert (
        spec.memory[-1].bandwidth == 20e9
        and spec.memory[-1].energy_per_byte == base.memory[-1].energy_per_byte
    )
    assert spec.ops == base.ops


def test_relative_base_chain(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "grand.yaml", {"base": "bitfusion", "description": "grand"})
    write(
        tmp_path / "parent.yaml",
        {"base": "sub/grand.yaml", "precisions": {"w16a16": {"throughput": "128 GMAC/s"}}},
    )
    spec = hwspecs.load(write(tmp_path / "leaf.yaml", {"base": "parent.yaml", "name": "leaf_chip"}))
    assert spec.name == "leaf_chip"
    assert spec.description == "grand"
    assert spec.precision(8, 8).throughput == 4 * 128e9, (
        "the bit-scaling rule follows the overridden anchor"
    )


def test_emulated_pair_without_numbers_follows_the_overridden_target(tmp_path: Path) -> None:
    write(
        tmp_path / "parent.yaml",
        {
            "description": "parent",
            "bits": {"weights": [4, 8], "activations": [8]},
            "precisions": {
                "float": {"throughput": 10, "energy_per_mac": 1},
                "w4a8": {"emulated_as": "float"},
                "w8a8": {"throughput": 20, "energy_per_mac": 1},
            },
            "memory": {"dram": {"bandwidth": 1, "energy_per_byte": 1}},
        },
    )
    child = hwspecs.load(
        write(
            tmp_path / "child.yaml",
            {"base": "parent.yaml", "precisions": {"float": {"throughput": 30}}},
        )
    )
    assert child.precision(4, 8).throughput == 30
    assert child.precision(4, 8).emulated_as == "float"
