"""Every export medexport produces parses and builds with TensorRT's ONNX parser (TensorRT for RTX, CPU-only).

The plugin on/off choice is TensorRT's at build time, not the export's: the file is the same. TensorRT for RTX has
no plugin API, so it always builds the function bodies (plugin off); the plugin path needs real TensorRT.
"""

import onnx
import pytest

import medexport
from medexport.backend.trt.rtx import parse_and_build, rtx_status
from medexport.core.batch import BatchRange
from medexport.errors import ExportError
from medexport.export import export_onnx

from ..conftest import TINY

pytestmark = pytest.mark.skipif(not rtx_status()[0], reason=rtx_status()[1])


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rtx")
    out = {}
    for precision in ("fp32", "fp16", "bf16"):
        for n in (16, 32):  # square and non-square mediator grids
            model = medexport.create_model(TINY.with_mediators(n), init="random", seed=n)
            out[precision, n] = export_onnx(model, folder / f"m{n}.{precision}.onnx", precision=precision).path
    return out


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("n", [16, 32])
def test_exports_parse_and_build(exports, precision, n):
    check = parse_and_build(
        exports[precision, n],
        batch=BatchRange(1, 2, 8),
        sample_shape=(TINY.in_channels, TINY.input_size, TINY.input_size),
    )
    assert check.layers > 100 and check.plan_bytes > 0  # the function bodies are inlined into real layers
    assert check.plugin_layers == 0  # no plugin API here: what a manifest would record as plugin: false


def test_the_demo_export_parses_and_builds(tmp_path):
    from medexport.demo import demo_checkpoints

    model = medexport.load_checkpoint(demo_checkpoints([8])[8])
    path = export_onnx(model, tmp_path / "demo8.onnx").path
    check = parse_and_build(path, batch=BatchRange(1, 64, 512), sample_shape=(1, 28, 28))
    assert check.layers > 100 and check.plan_bytes > 0


def test_a_graph_the_parser_cannot_read_is_reported(exports, tmp_path):
    proto = onnx.load(str(exports["fp32", 16]))
    del proto.functions[:]  # MediatorAttention nodes without their body: an op nobody implements
    path = tmp_path / "nobody.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(ExportError, match="parser .* rejects"):
        parse_and_build(path, batch=BatchRange(1, 2, 8), sample_shape=(4, 16, 16))


@pytest.mark.parametrize("precision", ["int8-static", "fp8"])
def test_quantised_qdq_exports_parse_and_build(exports, tmp_path, precision):
    """The calibrated Q/DQ forms are what TensorRT consumes (weights and activations quantised, biases float);
    the dynamic int8 form is ONNX Runtime's and TensorRT refuses it (medexport says so before building)."""
    import numpy as np

    from medexport.core.files import file_sha256
    from medexport.quant.calibration import CountData
    from medexport.quant.quantize import quantize_graph

    rng = np.random.default_rng(0)
    rows = tmp_path / "rows.npz"
    np.savez(
        rows,
        x=rng.standard_normal((16, TINY.in_channels, TINY.input_size, TINY.input_size), dtype=np.float32),
        t=rng.random(16, dtype=np.float32),
        y=rng.integers(0, TINY.num_classes + 1, 16),
    )
    data = CountData(16, rows, file_sha256(rows), 16, {})
    out = tmp_path / f"m16.{precision}.onnx"
    quantize_graph([exports["fp32", 16]], out, precision, data)
    check = parse_and_build(
        out, batch=BatchRange(1, 2, 8), sample_shape=(TINY.in_channels, TINY.input_size, TINY.input_size)
    )
    assert check.layers > 100 and check.plan_bytes > 0
