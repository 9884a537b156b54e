"""Every bundled spec loads, and every number in it says where it comes from."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mpqc import hwspecs
from mpqc.hwspecs import units
from mpqc.hwspecs.loader import bundled_dir, schema

BUNDLED = [
    "arm_a72",
    "bismo_cloud",
    "bismo_edge",
    "bitfusion",
    "generic",
    "silago",
    "x86_avx2",
    "x86_avx512_vnni",
]
QUANTITY_FIELDS = (
    "throughput",
    "depthwise_throughput",
    "energy_per_mac",
    "weight_unpack",
    "capacity",
    "bandwidth",
    "energy_per_byte",
    "fixed",
    "per_element",
    "session_overhead",
)


def test_names_lists_the_bundled_specs() -> None:
    assert hwspecs.names() == BUNDLED


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_spec_validates(name: str) -> None:
    spec = hwspecs.validate(bundled_dir() / f"{name}.yaml")
    assert spec.name == name
    assert spec.supported_pairs(), "a spec must run at least one integer pair"
    capacities = [level.capacity for level in spec.memory]
    assert capacities == sorted(capacities), "memory levels are ordered nearest (smallest) first"


@pytest.mark.parametrize("name", BUNDLED)
def test_every_bundled_number_is_cited_or_marked_estimate(name: str) -> None:
    """A quantity line must carry a comment: a source tag like [H] / a paper, or 'estimate' with a
    reason. Tags used in a comment must be defined in the file's header."""
    text = (bundled_dir() / f"{name}.yaml").read_text()
    defined = set(re.findall(r"^#\s+(\[[A-Z]+\])", text, flags=re.M))
    pattern = re.compile(rf"^\s*({'|'.join(QUANTITY_FIELDS)}):\s*[^#\s][^#]*(#.*)?$")
    for number, line in enumerate(text.splitlines(), 1):
        match = pattern.match(line)
        if not match:
            continue
        comment = match.group(2) or ""
        assert comment.strip("# "), (
            f"{name}.yaml:{number}: number without a source or estimate note: {line.strip()}"
        )
        for tag in re.findall(r"\[[A-Z]+\]", comment):
            assert tag in defined, (
                f"{name}.yaml:{number}: source tag {tag} not defined in the header"
            )


@pytest.mark.parametrize("dimension", sorted(units.UNITS))
def test_schema_unit_patterns_match_the_converter(dimension: str) -> None:
    """schema.json (what the validator accepts) and units.py (what the loader converts) must
    agree."""
    text = json.dumps(schema())
    assert json.dumps(units.pattern(dimension))[1:-1] in text


def test_schema_is_a_valid_json_schema() -> None:
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(schema())


def test_cpu_specs_know_which_activation_types_are_fast() -> None:
    """PEERS.md: u8 activations x s8 weights are onnxruntime's fast path; 16-bit activations and
    4/2-bit weights are emulated (bytes saved, no compute speedup)."""
    for name in ("arm_a72", "x86_avx2", "x86_avx512_vnni"):
        spec = hwspecs.load(name)
        fast = spec.precision(8, 8)
        assert fast.native and fast.throughput > spec.precision(None, None).throughput
        for wbits, abits in [(4, 8), (2, 8), (8, 16), (16, 16)]:
            slow = spec.precision(wbits, abits)
            assert not slow.native
            assert slow.throughput <= spec.precision(None, None).throughput
    vnni = hwspecs.load("x86_avx512_vnni")
    assert vnni.precision(8, 8, act_signed=True).throughput < vnni.precision(8, 8).throughput


def test_ops_section_says_what_runs_in_integer() -> None:
    spec = hwspecs.load("x86_avx2")
    assert spec.runs_integer("Conv") and spec.runs_integer("MatMul") and spec.runs_integer("Gemm")
    assert not spec.runs_integer("LayerNormalization")
    assert not spec.runs_integer("Erf"), "an op the spec does not list stays float"
    conv = spec.instructions("Conv")
    assert any(i.inputs == ("uint8", "int8") and i.output == "int32" for i in conv)
    assert not hwspecs.load("bitfusion").runs_integer("Add")


def test_reference_configuration() -> None:
    assert hwspecs.load("x86_avx2").reference_pair == (None, None)
    assert hwspecs.load("bitfusion").reference_pair == (8, 8)
    assert hwspecs.load("silago").reference_pair == (8, 8)


def test_load_returns_the_same_object_for_an_unchanged_file_and_passes_specs_through() -> None:
    spec = hwspecs.load("x86_avx2")
    assert hwspecs.load("x86_avx2") is spec
    assert hwspecs.load(spec) is spec
    assert hwspecs.load(Path(spec.source)) is spec


def test_the_readme_example_is_a_valid_spec(tmp_path: Path) -> None:
    """hwspecs/README.md shows every field; the example must load (base: x86_avx2 fills the
    rest)."""
    readme = (Path(hwspecs.__file__).parent / "README.md").read_text()
    example = re.search(r"```yaml\n(.*?)```", readme, re.S)
    assert example is not None
    path = tmp_path / "readme.yaml"
    path.write_text(example.group(1))
    spec = hwspecs.validate(path)
    assert spec.precision(8, 16).unpack("MatMul") == 0 and spec.integer_layout == {
        "Conv": "Transpose"
    }
