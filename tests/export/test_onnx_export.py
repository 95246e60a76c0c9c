"""The exported graphs: one MediatorAttention node per block with its body, TensorRT-parsable ops, and
ONNX Runtime outputs equal to PyTorch (dynamic batch, several timesteps)."""

import onnx
import pytest
import torch

import medexport
from medexport.backend import OnnxrtRunner
from medexport.errors import ExportError
from medexport.export import DOMAIN, OP_TYPE, TENSORRT_ONNX_OPS, check_onnx, export_onnx
from medexport.export.supported_ops import unsupported_ops
from tests.conftest import COUNTS, TINY, model_inputs


def onnx_path(bundle, n):
    return bundle / f"mediators-{n}.fp32.onnx"


@pytest.mark.parametrize("n", COUNTS)
@pytest.mark.parametrize("batch", [1, 3])
def test_onnxruntime_matches_pytorch(tiny_bundle, tiny_checkpoints, n, batch):
    model = medexport.load_checkpoint(tiny_checkpoints[n])
    runner = OnnxrtRunner(onnx_path(tiny_bundle, n), n)
    x, _, y = model_inputs(TINY, batch=batch, seed=batch)
    for t_value in (0.0, 0.3, 0.96):
        t = torch.full((batch,), t_value)
        with torch.no_grad():
            want = model(x, t, y)
        got = runner(x, t, y)
        rel = (got - want).abs().max() / want.abs().max()
        assert rel < 1e-4, f"t={t_value}: relative error {rel:.2e}"


@pytest.mark.parametrize("n", COUNTS)
def test_graph_structure(tiny_bundle, n):
    proto = onnx.load(str(onnx_path(tiny_bundle, n)))  # round-trips through onnx.load
    nodes = [node for node in proto.graph.node if (node.domain, node.op_type) == (DOMAIN, OP_TYPE)]
    assert len(nodes) == TINY.depth
    for node in nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["plugin_namespace"] == b"medexport"
        assert abs(attrs["scale"] - (TINY.hidden_size // TINY.num_heads) ** -0.5) < 1e-7
        assert len(node.input) == 6
    (fn,) = [f for f in proto.functions if (f.domain, f.name) == (DOMAIN, OP_TYPE)]
    assert [n_.op_type for n_ in fn.node].count("Softmax") == 2
    default_ops = {node.op_type for node in proto.graph.node if node.domain == ""}
    assert not unsupported_ops(default_ops | {n_.op_type for n_ in fn.node})
    assert {node.domain for node in proto.graph.node} <= {"", DOMAIN}
    # pooling and biases are constants of the graph: no Resize (bias interpolation) or pooling op remains
    assert not default_ops & {"Resize", "AveragePool", "GlobalAveragePool"}
    onnx.checker.check_model(proto, full_check=True)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch


def test_check_rejects_ops_tensorrt_cannot_parse(tiny_bundle, tmp_path):
    proto = onnx.load(str(onnx_path(tiny_bundle, 16)))
    node = next(n for n in proto.graph.node if n.op_type == "Gelu")
    node.op_type = "Celu" if "Celu" not in TENSORRT_ONNX_OPS else "Bernoulli"  # a standard op TensorRT lacks
    path = tmp_path / "bad.onnx"
    onnx.save(proto, str(path))
    with pytest.raises(ExportError):
        check_onnx(path)
    assert unsupported_ops({"MatMul", "Bernoulli"}) == {"Bernoulli"}


def test_fp16_export_runs_on_onnxruntime(tmp_path):
    model = medexport.create_model(TINY.with_mediators(32), init="random", seed=3)
    result = export_onnx(model, tmp_path / "m.fp16.onnx", precision="fp16")
    assert result.mediator_nodes == TINY.depth
    x, t, y = model_inputs(TINY, batch=2)
    with torch.no_grad():
        want = model(x, t, y)
    got = OnnxrtRunner(result.path, 32, precision="fp16")(x, t, y)
    assert got.dtype == torch.float32
    rel = (got - want).abs().max() / want.abs().max()
    assert rel < 2e-2


def test_bad_precision_and_opset():
    from medexport.export import ExportSpec

    with pytest.raises(ExportError, match="unknown precision"):
        export_onnx(medexport.create_model(TINY), "x.onnx", precision="int3")
    with pytest.raises(ExportError, match="opset"):
        ExportSpec(opset=13)
    with pytest.raises(ExportError, match="bf16 needs opset >= 22"):
        ExportSpec(opset=20).opset_for("bf16")


def test_large_models_use_external_data(tmp_path, monkeypatch):
    from medexport.export import onnx_export

    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_THRESHOLD", 0)  # treat the tiny model as > 2 GB
    model = medexport.create_model(TINY.with_mediators(16), init="random", seed=1)
    result = export_onnx(model, tmp_path / "big.onnx")
    assert [p.name for p in result.files] == ["big.onnx", "big.onnx.data"]
    assert result.files[1].stat().st_size > result.files[0].stat().st_size
    x, t, y = model_inputs(TINY, batch=2)
    with torch.no_grad():
        want = model(x, t, y)
    got = OnnxrtRunner(result.path, 16)(x, t, y)
    assert (got - want).abs().max() / want.abs().max() < 1e-4
