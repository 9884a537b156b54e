"""Every kind of bad spec is a one-line SpecError naming the file, the field and what is allowed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from mpqc import hwspecs
from mpqc.hwspecs import SpecError
from mpqc.hwspecs.document import MAX_SPEC_BYTES

MINIMAL: dict[str, Any] = {
    "description": "a test chip",
    "bits": {"weights": [4, 8], "activations": [8]},
    "precisions": {
        "float": {"throughput": "10 GMAC/s", "energy_per_mac": "5 pJ"},
        "w8a8": {"throughput": "20 GMAC/s", "energy_per_mac": "2 pJ"},
        "w4a8": {"emulated_as": "w8a8"},
    },
    "memory": {
        "cache": {"capacity": "1 MiB", "bandwidth": "50 GB/s", "energy_per_byte": "5 pJ"},
        "dram": {"bandwidth": "10 GB/s", "energy_per_byte": "100 pJ"},
    },
}


def write(tmp_path: Path, document: Any, name: str = "chip.yaml") -> Path:
    path = tmp_path / name
    path.write_text(document if isinstance(document, str) else yaml.safe_dump(document))
    return path


def with_change(path: str, value: Any) -> dict[str, Any]:
    """MINIMAL with the field at dotted ``path`` set to ``value`` (``...`` deletes it)."""
    document = yaml.safe_load(yaml.safe_dump(MINIMAL))
    *parents, last = path.split(".")
    node = document
    for part in parents:
        node = node[part]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return document


def expect_error(path: Path, *fragments: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        hwspecs.validate(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path)), message
    for fragment in fragments:
        assert fragment in message, message
    return info.value


def test_minimal_spec_loads(tmp_path: Path) -> None:
    spec = hwspecs.validate(write(tmp_path, MINIMAL))
    assert spec.name == "chip"
    assert spec.precision(8, 8).throughput == 20e9
    assert spec.precision(4, 8).throughput == 20e9 and not spec.precision(4, 8).native
    assert [level.name for level in spec.memory] == ["cache", "dram"]


@pytest.mark.parametrize(
    ("field", "value", "fragments"),
    [
        ("description", ..., ["description: missing required field"]),
        ("memory.dram.bandwidth", ..., ["memory.dram.bandwidth: missing required field"]),
        (
            "colour",
            "red",
            ["colour: unknown field", "allowed: base, bit_scaling, bits, description"],
        ),
        ("precisions.w8a8.speed", 3, ["precisions.w8a8.speed: unknown field", "throughput"]),
        ("precisions.w8a8.throughput", [1, 2], ["precisions.w8a8.throughput", "GMAC/s"]),
        (
            "precisions.w8a8.throughput",
            "20 GB/s",
            ["precisions.w8a8.throughput", "'20 GB/s' is not valid", "GMAC/s"],
        ),
        ("memory.dram.bandwidth", "10 pJ", ["memory.dram.bandwidth", "B/s"]),
        ("memory.cache.capacity", "1 MiB/s", ["memory.cache.capacity", "MiB"]),
        ("precisions.w8a8.throughput", -5, ["precisions.w8a8.throughput", "-5"]),
        (
            "precisions.w8a8.throughput",
            "0 GMAC/s",
            ["precisions.w8a8.throughput", "greater than zero"],
        ),
        ("memory.dram.bandwidth", 0, ["memory.dram.bandwidth", "greater than zero"]),
        ("precisions.w8a8.energy_per_mac", True, ["precisions.w8a8.energy_per_mac"]),
        ("bits.weights", [4, 32], ["bits.weights[1]", "32 is not allowed", "1..16"]),
        ("bits.weights", [0, 8], ["bits.weights[0]", "0 is not allowed"]),
        ("bits.weights", [4.5], ["bits.weights[0]"]),
        ("bits.weights", [], ["bits.weights", "non-empty"]),
        ("bits.weights", "8", ["bits.weights", "expected array"]),
        (
            "precisions.w32a8",
            {"throughput": 1, "energy_per_mac": 0},
            ["precisions.w32a8: key not allowed", "W, A in 1..16"],
        ),
        (
            "precisions.w16a8",
            {"throughput": 1, "energy_per_mac": 0},
            ["precisions.w16a8", "weight bits 16 not in bits.weights"],
        ),
        ("precisions.w4a8", {"note": "no numbers"}, ["precisions.w4a8", "emulated_as"]),
        (
            "precisions.w4a8.emulated_as",
            "w2a2",
            ["precisions.w4a8.emulated_as", "'w2a2' is not a precision", "float, w4a8, w8a8"],
        ),
        ("precisions.w8a8", {"emulated_as": "w4a8"}, ["emulation cycle"]),
        (
            "precisions.float.weight_unpack",
            "1 ns",
            ["precisions.float.weight_unpack", "only an emulated pair"],
        ),
        (
            "precisions.float.weight_unpack_ops",
            {"MatMul": "0 ns"},
            ["precisions.float.weight_unpack_ops", "only an emulated pair"],
        ),
        (
            "precisions.w4a8.weight_unpack_ops",
            {"MatMul": "fast"},
            ["precisions.w4a8.weight_unpack_ops.MatMul", "us"],
        ),
        ("memory.cache.capacity", ..., ["memory", "only one level may be unbounded"]),
        (
            "ops",
            {"Conv": ["int8 * int8 => int32"]},
            ["ops.Conv[0]", "instruction 'in1,in2 -> out'"],
        ),
        ("ops", {"conv": ["int8 -> int32"]}, ["ops.conv: key not allowed", "ONNX op type"]),
        ("overheads", {"Conv": {"fixed": "2 GB"}}, ["overheads.Conv.fixed", "us"]),
        (
            "bit_scaling",
            {"anchor": "w16a16"},
            ["bit_scaling.anchor", "not a native precision", "w8a8"],
        ),
        ("threads", 0, ["threads", "0"]),
        ("session_overhead", "-2 us", ["session_overhead", "'-2 us' is not valid", "us"]),
        ("session_overhead", "8 GB", ["session_overhead", "us"]),
        ("packed_operands", "yes", ["packed_operands", "expected boolean"]),
        ("fused_activations", {"float": ["relu"]}, ["fused_activations.float[0]", "ONNX op type"]),
        (
            "fused_activations",
            {"vector": ["Relu"]},
            ["fused_activations.vector: unknown field", "emulated, float, integer"],
        ),
        ("integer_layout", {"Conv": "nhwc"}, ["integer_layout.Conv", "op type"]),
        (
            "precisions.w8a8.depthwise_throughput",
            "0 GMAC/s",
            ["precisions.w8a8.depthwise_throughput", "greater than zero"],
        ),
        (
            "precisions.w8a8.depthwise_throughput",
            "5 GB/s",
            ["precisions.w8a8.depthwise_throughput", "GMAC/s"],
        ),
        (
            "overheads",
            {"MaxPool(float32)": {"fixed": "1 us"}},
            ["overheads.MaxPool(float32): key not allowed", "MaxPool(uint8)"],
        ),
    ],
)
def test_bad_field_is_named(tmp_path: Path, field: str, value: Any, fragments: list[str]) -> None:
    expect_error(write(tmp_path, with_change(field, value)), *fragments)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("- a\n- b\n", "top level is list, not a mapping"),
        ("just a string\n", "top level is str, not a mapping"),
        ("", "top level is empty, not a mapping"),
        ("a: [1, 2\n", "invalid YAML at line"),
        ("a: !!python/object:os.system ls\n", "invalid YAML"),
    ],
)
def test_yaml_that_is_not_a_spec_mapping(tmp_path: Path, text: str, fragment: str) -> None:
    expect_error(write(tmp_path, text), fragment)


def test_huge_file_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text("# padding\n" * (MAX_SPEC_BYTES // 10 + 1))
    expect_error(path, "too large", "1 MiB")


def test_binary_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.yaml"
    path.write_bytes(b"\x08\x07\x12\x00\x01onnx")
    expect_error(path, "binary content")


def test_non_utf8_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("description: caf\xe9\n".encode("latin-1"))
    expect_error(path, "not UTF-8")


def test_base_cycle_is_detected(tmp_path: Path) -> None:
    write(tmp_path, {"base": "b.yaml"}, "a.yaml")
    write(tmp_path, {"base": "a.yaml"}, "b.yaml")
    with pytest.raises(
        SpecError, match=r"b\.yaml: base: inheritance cycle a\.yaml -> b\.yaml -> a\.yaml"
    ):
        hwspecs.validate(tmp_path / "a.yaml")


def test_self_base_is_a_cycle(tmp_path: Path) -> None:
    expect_error(write(tmp_path, {"base": "self.yaml"}, "self.yaml"), "inheritance cycle")


def test_missing_base_file_and_unknown_base_name(tmp_path: Path) -> None:
    expect_error(
        write(tmp_path, {"base": "nowhere.yaml", "description": "x"}),
        "base: 'nowhere.yaml': no such spec file",
    )
    expect_error(
        write(tmp_path, {"base": "x86_avx3"}, "other.yaml"),
        "base: 'x86_avx3': unknown spec name; allowed: arm_a72",
    )


def test_unknown_name_and_missing_path() -> None:
    with pytest.raises(SpecError, match="nonexistent: unknown spec name; allowed: arm_a72"):
        hwspecs.load("nonexistent")
    with pytest.raises(SpecError, match="no such spec file"):
        hwspecs.load("/nonexistent/chip.yaml")


def test_error_inherited_from_base_is_reported_against_the_child(tmp_path: Path) -> None:
    broken = with_change("memory.dram.bandwidth", "fast")
    write(tmp_path, broken, "parent.yaml")
    child = write(tmp_path, {"base": "parent.yaml", "description": "child"}, "child.yaml")
    expect_error(child, "memory.dram.bandwidth")


def alias_bomb(levels: int) -> str:
    """A spec whose ``note`` is 9**levels strings through YAML aliases (the 'billion laughs')."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, levels)]
    body = yaml.safe_dump(with_change("precisions.w8a8.note", "NOTE"))
    return "\n".join(lines) + "\n" + body.replace("NOTE", f"*l{levels - 1}")


def test_alias_bomb_is_refused_before_it_expands(tmp_path: Path) -> None:
    path = write(tmp_path, alias_bomb(9))
    assert path.stat().st_size < 2048
    expect_error(path, "expands to more than", "YAML aliases")


def test_a_few_aliases_are_fine(tmp_path: Path) -> None:
    text = yaml.safe_dump(MINIMAL).replace("energy_per_mac: 5 pJ", "energy_per_mac: &e 5 pJ")
    text = text.replace("energy_per_mac: 2 pJ", "energy_per_mac: *e")
    assert hwspecs.validate(write(tmp_path, text)).precision(8, 8).energy_per_mac == 5e-12


def test_recursive_alias_is_refused(tmp_path: Path) -> None:
    text = yaml.safe_dump(MINIMAL) + "provenance: &p {again: *p}\n"
    expect_error(write(tmp_path, text), "refers to itself")


def test_deep_nesting_is_one_line(tmp_path: Path) -> None:
    expect_error(write(tmp_path, "description: x\nbits: " + "[" * 50000 + "]" * 50000), "nested")


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("precisions.w8a8.throughput", float("nan"), "not a finite number"),
        ("precisions.w8a8.throughput", float("inf"), "not a finite number"),
        ("precisions.w8a8.throughput", "1e400 TMAC/s", "not a finite number"),
        ("precisions.w8a8.throughput", "1e9 TMAC/s", "at most"),
        ("precisions.w8a8.throughput", "1e-9 MAC/s", "at least"),
        ("precisions.w8a8.energy_per_mac", float("nan"), "not a finite number"),
        ("precisions.w8a8.energy_per_mac", "5e30 pJ", "at most"),
        ("memory.dram.bandwidth", float("inf"), "not a finite number"),
        ("memory.cache.capacity", float("inf"), "not a finite number"),
        ("memory.cache.energy_per_byte", float("nan"), "not a finite number"),
        ("overheads", {"Conv": {"fixed": float("nan")}}, "not a finite number"),
        ("overheads", {"Conv": {"per_element": "1e9 s"}}, "at most"),
        ("session_overhead", float("inf"), "not a finite number"),
        ("bit_scaling", {"anchor": "w8a8", "max_speedup": float("nan")}, "not a finite number"),
    ],
)
def test_non_finite_and_absurd_quantities_are_refused(
    tmp_path: Path, field: str, value: Any, fragment: str
) -> None:
    error = expect_error(write(tmp_path, with_change(field, value)), fragment)
    assert error.spec_field.startswith(field), error.spec_field
