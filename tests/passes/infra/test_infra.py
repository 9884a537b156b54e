"""Pass infrastructure: pipeline text, contracts, the registry and its plug-ins, the manager,
instruments."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import io
import pathlib
import re
import sys
import textwrap
import time
import types
import typing

import onnx_ir as ir
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from models import exporter_quirks, small_cnn

from mpqc import passes
from mpqc.ir import annotations as A
from mpqc.passes import (
    CompileContext,
    IRPrinter,
    NamedPipeline,
    Pass,
    PassInputError,
    PassManager,
)
from mpqc.passes.infra import registry
from mpqc.passes.infra.base import CHECK_CONTRACTS
from mpqc.passes.infra.instruments import dump_header
from mpqc.passes.infra.pipeline import (
    PassSpec,
    format_pipeline,
    parse_pipeline,
    resolve_pipeline,
    settable,
)

# --- pipeline strings ---------------------------------------------------------------------------

#: Values that pass validation for string options whose Options check them against a vocabulary.
_VALID_TEXT = {"uniform": ["w8a8", "w4a8", "w2a16", "w16a16"]}
_TEXT = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_.-", min_size=1, max_size=8).filter(
    lambda s: s != "none"
)


def _values(name: str, hint: typing.Any, default: typing.Any) -> st.SearchStrategy[typing.Any]:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return st.sampled_from(args)
    if origin is tuple:
        return st.lists(_values(name, args[0], None), max_size=3).map(tuple)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*[st.none() if a is type(None) else _values(name, a, None) for a in args])
    if hint is bool:
        return st.booleans()
    if hint is int:
        return st.integers(-(2**40), 2**40)
    if hint is float:
        return st.floats(allow_nan=False)
    if hint is str:
        examples = [default] if isinstance(default, str) else []
        return (
            st.sampled_from(examples + _VALID_TEXT.get(name, []))
            if examples + _VALID_TEXT.get(name, [])
            else _TEXT
        )
    raise AssertionError(f"no strategy for option type {hint}")


@st.composite
def _steps(draw: st.DrawFn) -> tuple[type[Pass], typing.Any]:
    cls = passes.get(draw(st.sampled_from(passes.names())))
    hints = typing.get_type_hints(cls.Options)
    values = {}
    for field in dataclasses.fields(cls.Options):
        if not settable(hints[field.name]):
            continue  # search's strategy options: a dataclass, given through its own fields
        if draw(st.booleans()):
            values[field.name] = draw(_values(field.name, hints[field.name], field.default))
    try:
        options = cls.Options(**values)
    except ValueError:
        assume(False)
    return cls, options


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)
@given(st.lists(_steps(), min_size=1, max_size=4))
def test_pipeline_strings_round_trip(spec: list[tuple[type[Pass], typing.Any]]) -> None:
    text = format_pipeline(spec)
    resolved = resolve_pipeline(text)
    assert resolved == spec
    assert format_pipeline(resolved) == text


def test_pipeline_string_with_spaces_and_lists() -> None:
    spec = resolve_pipeline(
        " canonicalize{ fold_batchnorm = false } , "
        "lower-qdq{uniform=w4a8,act_signed=true},verify{min_sqnr_db=20}"
    )
    assert [cls.name for cls, _ in spec] == ["canonicalize", "lower-qdq", "verify"]
    assert (
        spec[0][1].fold_batchnorm is False
        and spec[1][1].uniform == "w4a8"
        and spec[2][1].min_sqnr_db == 20.0
    )
    assert (
        format_pipeline(spec)
        == "canonicalize{fold_batchnorm=false},lower-qdq{uniform=w4a8,act_signed=true},"
        "verify{min_sqnr_db=20.0}"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("canonicalise", "unknown pass 'canonicalise': did you mean canonicalize"),
        ("lower-qdk{uniform=w8a8}", "unknown pass 'lower-qdk': did you mean lower-qdq"),
        (
            "canonicalize{fold_everything=true}",
            "pass 'canonicalize' has no option 'fold_everything' "
            "(options: fold_constants, fold_batchnorm)",
        ),
        ("canonicalize{fold_batchnorm=maybe}", "option 'fold_batchnorm': 'maybe' is not a boolean"),
        ("fold-constants{max_bytes=lots}", "option 'max_bytes': 'lots' is not an integer"),
        ("verify{min_sqnr_db=[1,2]}", "expected one value, got a list"),
        ("lower-qdq{uniform=w9x}", "'w9x' is not a bit choice like w8a8"),
        ("canonicalize{fold_batchnorm=true", "expected '}', found end of text"),
        ("canonicalize}", "unexpected '}'"),
        (
            "canonicalize{fold_batchnorm=true,fold_batchnorm=false}",
            "option 'fold_batchnorm' given twice",
        ),
        ("canonicalize,,verify", "expected a pass name"),
        ("", "empty pipeline"),
    ],
)
def test_bad_pipelines_give_one_line_pass_errors(text: str, message: str) -> None:
    with pytest.raises(PassInputError) as info:
        resolve_pipeline(text)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_parsing_needs_no_registry() -> None:
    specs = parse_pipeline("no-such-pass{block-size=32,bits=[2, 4]},canonicalize")
    assert specs == [
        PassSpec("no-such-pass", (("block_size", "32"), ("bits", ("2", "4")))),
        PassSpec("canonicalize"),
    ]
    assert format_pipeline(specs) == "no-such-pass{block_size=32,bits=[2,4]},canonicalize"
    assert parse_pipeline(format_pipeline(specs)) == specs
    with pytest.raises(PassInputError, match="expected '}'"):
        parse_pipeline("no-such-pass{a=1")
    with pytest.raises(PassInputError, match="unknown pass 'no-such-pass'"):
        resolve_pipeline(specs)


def test_kebab_case_option_keys_are_the_snake_case_ones() -> None:
    kebab = resolve_pipeline("lower-qdq{block-size=32,weight-only=true}")
    assert kebab == resolve_pipeline("lower-qdq{block_size=32,weight_only=true}")
    assert format_pipeline(kebab) == "lower-qdq{weight_only=true,block_size=32}"  # canonical
    with pytest.raises(PassInputError, match="option 'block_size' given twice"):
        parse_pipeline("lower-qdq{block-size=32,block_size=64}")


def test_names_and_get() -> None:
    names = passes.names()
    assert names == sorted(names)
    assert {
        "canonicalize",
        "fold-batchnorm",
        "fold-constants",
        "lower-qdq",
        "verify",
        "calibrate",
    } <= set(names)
    for name in names:
        cls = passes.get(name)
        assert issubclass(cls, Pass | NamedPipeline) and cls.name == name
        assert dataclasses.is_dataclass(cls.Options)


# --- the registry's plug-ins ----------------------------------------------------------------------

_PLUGIN = '''
import onnx_ir as ir
from mpqc.passes import Pass


class NameNodes(Pass):
    """Give every unnamed node a name (a test plug-in)."""

    name = "name-nodes"

    def call(self, model):
        for i, node in enumerate(model.graph):
            node.name = node.name or f"n{i}"
        return ir.passes.PassResult(model, modified=True)


class NotAPass:
    name = "not-a-pass"
'''


@pytest.fixture
def plugin(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> typing.Callable[[str, str], None]:
    """Install a fake distribution's entry point in the mpqc.passes group."""
    (tmp_path / "mpqc_test_plugin.py").write_text(textwrap.dedent(_PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_PASSES", dict(registry._PASSES))
    monkeypatch.setattr(registry, "_plugins_loaded", False)

    def install(name: str, target: str) -> None:
        entry = importlib.metadata.EntryPoint(
            name=name, value=f"mpqc_test_plugin:{target}", group=registry.ENTRY_POINT_GROUP
        )

        def entry_points(**kwargs: str) -> list[importlib.metadata.EntryPoint]:
            return [entry] if kwargs.get("group") == registry.ENTRY_POINT_GROUP else []

        monkeypatch.setattr(registry.metadata, "entry_points", entry_points)

    yield install
    sys.modules.pop("mpqc_test_plugin", None)


def test_entry_point_passes_are_registered_and_run(
    plugin: typing.Callable[[str, str], None],
) -> None:
    plugin("name-nodes", "NameNodes")
    assert "name-nodes" in passes.names()
    spec = resolve_pipeline("canonicalize,name-nodes")
    assert spec[1][0].__module__ == "mpqc_test_plugin"
    from mpqc.pipeline import Pipeline

    model = Pipeline("name-nodes").run(small_cnn())
    assert all(node.name for node in model.graph)


def test_entry_point_that_is_not_a_pass_is_an_error(
    plugin: typing.Callable[[str, str], None],
) -> None:
    plugin("not-a-pass", "NotAPass")
    with pytest.raises(
        PassInputError, match="'not-a-pass' in 'mpqc.passes' is not an mpqc Pass class"
    ):
        passes.names()


def test_entry_point_name_must_match_the_pass(plugin: typing.Callable[[str, str], None]) -> None:
    plugin("other-name", "NameNodes")
    with pytest.raises(PassInputError, match="points to a pass named 'name-nodes'"):
        passes.get("other-name")


def test_register_rejects_bad_and_taken_names() -> None:
    class NoName(Pass):
        pass

    with pytest.raises(TypeError, match="kebab-case"):
        registry.register(NoName)

    class Clash(Pass):
        name = "canonicalize"

    with pytest.raises(TypeError, match="taken"):
        registry.register(Clash)


# --- the manager: reads and stale annotations -----------------------------------------------------


class _NeedsSensitivity(Pass):
    name = "needs-sensitivity"
    reads = frozenset({A.SENSITIVITY})

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return ir.passes.PassResult(model, modified=False)


class _Rewrite(Pass):
    """Changes the model and keeps nothing."""

    name = "rewrite"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        next(iter(model.graph)).name = "renamed"
        return ir.passes.PassResult(model, modified=True)


class _RewriteKeepingSensitivity(_Rewrite):
    name = "rewrite-keeping-sensitivity"
    preserves = frozenset({A.SENSITIVITY})


class _Analyse(Pass):
    """Writes a score on every Conv and changes nothing else."""

    name = "analyse"
    writes = frozenset({A.sensitivity_key("test")})
    preserves = frozenset({A.ALL})

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        for node in model.graph:
            if node.op_type == "Conv":
                A.sensitivity_key("test").set(node, {"w8a8": 1.0})
        return ir.passes.PassResult(model, modified=False)


def _annotated() -> ir.Model:
    model = small_cnn()
    for node in model.graph:
        A.sensitivity_key("entropy").set(node, {"w4a8": 0.5})
        A.BITS.set(node, {"w": 8, "a": 8})
    return model


def test_reads_is_checked_before_the_pass_runs() -> None:
    with pytest.raises(
        ir.passes.PreconditionError,
        match=r"pass 'needs-sensitivity' needs mpqc\.sens\.\*: run the pass that writes it first",
    ):
        PassManager([_NeedsSensitivity()])(small_cnn())
    PassManager([_Analyse(), _NeedsSensitivity()])(small_cnn())  # satisfied by an earlier pass


def test_a_modifying_pass_drops_annotations_it_does_not_preserve() -> None:
    model = _annotated()
    result = PassManager([_Rewrite()])(model)
    assert result.modified
    assert A.present_keys(result.model) == set()


def test_a_preserving_pass_keeps_its_patterns_only() -> None:
    model = _annotated()
    PassManager([_RewriteKeepingSensitivity()])(model)
    assert A.present_keys(model) == {"mpqc.sens.entropy"}


def test_an_unmodifying_pass_keeps_everything() -> None:
    model = _annotated()
    PassManager([_Analyse()])(model)
    assert A.present_keys(model) == {"mpqc.sens.entropy", "mpqc.sens.test", "mpqc.bits"}


class _ForgetsItsWrite(Pass):
    """Declares mpqc.bits and writes nothing: the bug the writes check exists to catch."""

    name = "forgets-bits"
    writes = frozenset({A.BITS})
    preserves = frozenset({A.ALL})

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return ir.passes.PassResult(model, modified=False)


class _HasNothingToDo(_ForgetsItsWrite):
    name = "nothing-to-do"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.nothing_to_do("nothing-to-do: no layer to act on")
        return ir.passes.PassResult(model, modified=False)


class _Reports(Pass):
    """Sets its own report section."""

    name = "reports"
    writes = frozenset({A.REPORT})
    preserves = frozenset({A.ALL})

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.report(model, {"layers": 3})
        return ir.passes.PassResult(model, modified=False)


class _OverwritesAReport(_Reports):
    """Rewrites the whole report, as passes did before each owned a section."""

    name = "overwrites-report"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        A.REPORT.set(model, {"reports": {"layers": 0}, self.name: {}})
        return ir.passes.PassResult(model, modified=False)


def test_a_pass_that_forgets_a_declared_write_fails_naming_pass_and_key() -> None:
    with pytest.raises(
        ir.passes.PostconditionError,
        match=r"pass 'forgets-bits' declares that it writes mpqc\.bits but did not write it",
    ):
        PassManager([_ForgetsItsWrite()])(small_cnn())


def test_nothing_to_do_waives_the_writes_of_that_run_only_and_notes_why() -> None:
    context = passes.CompileContext()
    PassManager([_HasNothingToDo(context=context)])(small_cnn())
    assert context.notes == ["nothing-to-do: no layer to act on"]
    with pytest.raises(ir.passes.PostconditionError, match="forgets-bits"):
        PassManager([_HasNothingToDo(), _ForgetsItsWrite()])(small_cnn())


def test_each_pass_owns_its_report_section() -> None:
    model = small_cnn()
    PassManager([_Reports()])(model)
    assert A.REPORT.get(model) == {"reports": {"layers": 3}}
    with pytest.raises(
        ir.passes.PostconditionError,
        match=r"pass 'overwrites-report' changed another pass's section of mpqc\.report",
    ):
        PassManager([_OverwritesAReport()])(model)


def test_a_report_pass_that_writes_no_section_fails() -> None:
    class Silent(_Reports):
        name = "silent"

        def call(self, model: ir.Model) -> ir.passes.PassResult:
            return ir.passes.PassResult(model, modified=False)

    with pytest.raises(ir.passes.PostconditionError, match="its mpqc.report section"):
        PassManager([Silent()])(small_cnn())


def test_contracts_name_keys_not_text() -> None:
    with pytest.raises(
        TypeError, match=r"Text\.writes must hold annotation keys .* not 'mpqc\.bits'"
    ):

        class Text(Pass):
            name = "text"
            writes = frozenset({"mpqc.bits"})

    for name in passes.names():
        cls = passes.get(name)
        if issubclass(cls, NamedPipeline):
            continue  # no contract of its own: the passes it expands to have theirs
        for key in cls.reads | cls.may_read | cls.writes | cls.preserves:
            assert isinstance(key, (A.AnnotationKey, A.KeyFamily)), (name, key)


class _ReadsBits(Pass):
    """Reads mpqc.bits, which it declares only when told to."""

    name = "reads-bits"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        A.BITS.get(next(iter(model.graph)))
        return ir.passes.PassResult(model, modified=False)


def test_the_tests_check_that_passes_read_only_what_they_declare(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(
        ir.passes.InvariantError,
        match=r"pass 'reads-bits' read mpqc\.bits but does not declare it in reads or may_read",
    ):
        PassManager([_ReadsBits()])(small_cnn())

    class Declared(_ReadsBits):
        may_read = frozenset({A.BITS})

    PassManager([Declared()])(small_cnn())
    monkeypatch.delenv(CHECK_CONTRACTS)  # a user's run: mpqc's own declarations are not checked
    PassManager([_ReadsBits()])(small_cnn())


def test_a_pass_reports_only_when_it_declares_the_report() -> None:
    class Undeclared(_Reports):
        name = "undeclared-report"
        writes = frozenset()

    with pytest.raises(ir.passes.InvariantError, match="'undeclared-report' reports without"):
        PassManager([Undeclared()])(small_cnn())


def test_mpqc_passes_run_inside_onnx_ir_pass_manager() -> None:
    model = _annotated()
    manager = ir.passes.PassManager([_RewriteKeepingSensitivity(), _Analyse()])
    result = manager(model)
    assert result.modified
    assert A.present_keys(model) == {"mpqc.sens.entropy", "mpqc.sens.test"}
    assert next(iter(model.graph)).name == "renamed"

    quirks = exporter_quirks()
    ir.passes.PassManager([passes.get("canonicalize")()])(quirks)
    assert "Constant" not in {node.op_type for node in quirks.graph}


def test_pass_options_and_repr() -> None:
    p = passes.get("lower-qdq")(uniform="w4a8")
    assert repr(p) == "<pass lower-qdq{uniform=w4a8}>"
    with pytest.raises(TypeError, match="options must be Options"):
        passes.get("lower-qdq")(passes.get("verify").Options())


# --- instruments ---------------------------------------------------------------------------------


def _run_printed(printer: IRPrinter) -> list[str]:
    """Run analyse, rewrite, analyse on small_cnn; return the printed dump headers."""
    PassManager([_Analyse(), _Rewrite(), _Analyse()], [printer])(small_cnn())
    text = printer.stream.getvalue()
    return [line for line in text.splitlines() if line.startswith("// -----//")]


def test_print_ir_after_all() -> None:
    headers = _run_printed(IRPrinter(after_all=True, stream=io.StringIO()))
    assert headers == [dump_header("analyse"), dump_header("rewrite"), dump_header("analyse")]
    assert dump_header("rewrite") == "// -----// IR Dump After rewrite //----- //"


def test_print_ir_after_one_pass() -> None:
    assert _run_printed(IRPrinter(after=frozenset({"rewrite"}), stream=io.StringIO())) == [
        dump_header("rewrite")
    ]


def test_print_ir_after_change_prints_only_changes() -> None:
    # analyse writes scores (a change), rewrite renames and drops them (a change), the second
    # analyse writes the same scores again (a change); a fourth pass that does nothing must stay
    # silent.
    printer = IRPrinter(after_change=True, stream=io.StringIO())
    PassManager([_Analyse(), _Analyse(), _Rewrite(), _Rewrite()], [printer])(small_cnn())
    headers = [
        line for line in printer.stream.getvalue().splitlines() if line.startswith("// -----//")
    ]
    assert headers == [dump_header("analyse"), dump_header("rewrite")]


def test_ir_dump_dir_writes_numbered_files(tmp_path: pathlib.Path) -> None:
    folder = tmp_path / "dumps"
    printer = IRPrinter(dump_dir=folder)
    model = small_cnn()
    PassManager([_Analyse(), _Rewrite()], [printer])(model)
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["001_analyse.txt", "002_rewrite.txt"]
    text = (folder / "002_rewrite.txt").read_text()
    assert text.splitlines()[0] == dump_header("rewrite")
    from mpqc.ir import dump

    assert text == dump_header("rewrite") + "\n" + dump(model)


def test_timing_and_progress() -> None:
    timing = passes.Timing()
    stream = io.StringIO()
    progress = passes.Progress(2, stream, after=0.0)
    PassManager([_Analyse(), _Rewrite()], [timing, progress])(small_cnn())
    assert [name for name, _ in timing.seconds] == ["analyse", "rewrite"]
    assert all(seconds >= 0 for _, seconds in timing.seconds)
    lines = stream.getvalue().splitlines()
    assert re.fullmatch(r"\[1/2\] analyse \d+\.\d\d s", lines[0]), lines
    assert re.fullmatch(r"\[2/2\] rewrite \d+\.\d\d s", lines[1]), lines


def test_progress_shows_only_passes_slower_than_its_threshold_with_their_steps() -> None:
    stream = io.StringIO()
    progress = passes.Progress(3, stream, after=0.05, live=False)
    context = CompileContext(progress=progress)

    class _Counting(_Analyse):
        name = "counting"

        def call(self, model):
            steps = self.context.steps("samples", 4)
            for _ in range(4):
                time.sleep(0.02)
                steps.advance()
            return super().call(model)

    PassManager([_Analyse(), _Counting(context=context), _Rewrite()], [progress])(small_cnn())
    assert re.fullmatch(r"\[2/3\] counting \d+\.\d\d s \(4 samples\)\n", stream.getvalue())


def test_progress_on_a_terminal_draws_a_bar_once_a_pass_runs_long() -> None:
    stream = io.StringIO()
    progress = passes.Progress(1, stream, after=0.05, live=True)
    context = CompileContext(progress=progress)

    class _Slow(_Analyse):
        name = "slow"

        def call(self, model):
            steps = self.context.steps("samples", 5)
            deadline = time.monotonic() + 30
            while progress._bar is None and time.monotonic() < deadline:  # a loaded machine
                time.sleep(0.01)
            for _ in range(5):
                time.sleep(0.04)
                steps.advance()
            return super().call(model)

    PassManager([_Slow(context=context)], [progress])(small_cnn())
    drawn = stream.getvalue()
    assert "[1/1] slow" in drawn and "5/5" in drawn and "samples" in drawn
