"""mpqc as a pass in Olive, Microsoft's onnxruntime model-optimization toolchain.

Olive finds a pass by its name in a *package config*, a table from pass names to module paths.
``package_config()`` returns Olive's own table with ``MpqcQuantization`` added, so a workflow runs
it like any built-in pass::

    from olive.workflows import run
    run("workflow.json", package_config=package_config())

where ``workflow.json`` names ``{"type": "MpqcQuantization", "hw": "x86_avx512_vnni", ...}`` among
its passes. The pass hands the model's file to ``mpqc.compile`` and returns the quantized model as
Olive's ``ONNXModelHandler``, so Olive's evaluators, caching and later passes see an ordinary ONNX
model; ``mpqc.report`` (per-layer bits and why) travels in its metadata.

Olive depends on PyTorch and transformers, which mpqc does not, so this module is an example and not
a part of the ``mpqc`` package: copy it next to your workflow (``tests/examples/test_olive.py`` runs
it whenever Olive is installed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx_ir as ir
from olive.hardware import AcceleratorSpec
from olive.model import ONNXModelHandler
from olive.model.utils import resolve_onnx_path
from olive.package_config import OlivePackageConfig
from olive.passes import Pass
from olive.passes.onnx.common import get_external_data_config, model_proto_to_olive_model
from olive.passes.pass_config import BasePassConfig, PassConfigParam

import mpqc

#: The mpqc options a workflow may set, with their types and defaults (``mpqc.CompileOptions``).
_OPTIONS: dict[str, tuple[type, Any, str]] = {
    "hw": (str, "generic", "a bundled spec name (mpqc-hw list) or a spec .yaml path"),
    "calib": (str, None, "a folder of .npz samples keyed by input name (mpqc --calib)"),
    "max_size": (str, None, "size budget: a ratio of the float model ('0.25x') or '3MB'"),
    "max_latency": (str, None, "latency budget on the spec ('2ms' or '0.5x')"),
    "uniform": (str, "", "the same bits for every layer ('w8a8') instead of a search"),
    "strategy": (str, "ilp", "the search strategy (mpqc --help-passes)"),
    "plan": (str, "", "lower this plan file (--plan-out's yaml or onnxruntime's overrides json)"),
    "seed": (int, 0, "same seed, same output"),
}


class MpqcQuantization(Pass):
    """Choose bits per layer for the target under the budget with mpqc, then lower to QDQ ONNX."""

    @classmethod
    def _default_config(cls, accelerator_spec: AcceleratorSpec) -> dict[str, PassConfigParam]:
        config = {
            name: PassConfigParam(type_=kind, default_value=default, description=description)
            for name, (kind, default, description) in _OPTIONS.items()
        }
        config.update(get_external_data_config())
        return config

    def _run_for_config(
        self, model: ONNXModelHandler, config: type[BasePassConfig], output_model_path: str
    ) -> ONNXModelHandler:
        options = mpqc.CompileOptions(
            hw=config.hw,
            calibration=config.calib,
            max_size=config.max_size,
            max_latency=config.max_latency,
            uniform=config.uniform,
            strategy=config.strategy,
            plan=config.plan,
            seed=config.seed,
        )
        result = mpqc.compile(model.model_path, options)
        output = resolve_onnx_path(output_model_path, Path(model.model_path).name)
        return model_proto_to_olive_model(ir.to_proto(result.ir_model), output, config)


def package_config() -> dict[str, Any]:
    """Olive's own package config with ``MpqcQuantization`` added (its module is this file's)."""
    with open(OlivePackageConfig.get_default_config_path()) as file:
        table = json.load(file)
    table["passes"]["MpqcQuantization"] = {
        "module_path": f"{MpqcQuantization.__module__}.MpqcQuantization",
        "supported_providers": ["CPUExecutionProvider"],
        "supported_accelerators": ["cpu"],
        "supported_precisions": ["int4", "int8", "int16", "uint8", "uint16"],
        "supported_algorithms": [],
        "supported_quantization_encodings": ["qdq"],
    }
    return table
