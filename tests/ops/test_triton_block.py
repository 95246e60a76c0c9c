"""The Triton kernels of the whole mediator block (``medexport::mediator_block``) against the float64 reference.

As in ``test_triton_kernel.py``, the kernels run in a worker subprocess (``python test_triton_block.py MODE``,
one JSON object printed), because ``TRITON_INTERPRET=1`` must be set before triton is imported. Modes:

* ``interpret``: every case of CASES (ragged N, non-square and single mediator grids, head dim 72, fp32 / fp16 /
  bf16, both forms, a strided qkv) against the reference in float64, the output poisoned first so an unwritten
  element shows; and the errors for operands the kernels do not take.
* ``compile``: the four kernels compiled ahead of time for sm_90 (Hopper) at every launch the CUDA op may pick,
  in bf16 and fp16 at the SiT-XL/2 head dim: a kernel that would not compile on the GPU fails here.

In-process tests check the op's reference against the model's decomposed block, the op's registration
(``opcheck``), and how ``block_forms`` chooses among candidates.
"""

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
HAS_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (pip install 'medexport[triton]')")

TOLERANCE = {"float32": 1e-5, "float16": 1e-2, "bfloat16": 2e-2}

#: id -> (B, H, grid side G (N = G * G), mediator grid (rows, cols), d, dtype, launch)
CASES = {
    "fused-fp32-4x4-d16": (1, 2, 8, (4, 4), 16, "float32", {}),
    "fused-fp32-ragged100-2x3-d72": (2, 2, 10, (2, 3), 72, "float32", {"block_n": 32}),
    "fused-fp32-n1-ragged49-d72": (1, 2, 7, (1, 1), 72, "float32", {"block_n": 16}),
    "fused-fp32-strided-qkv": (2, 2, 6, (2, 2), 24, "float32", {"block_n": 16, "strided": True}),
    "fused-fp16-3x5-d72": (2, 2, 9, (3, 5), 72, "float16", {"block_n": 32, "num_warps": 8}),
    "fused-bf16-4x4-d72": (2, 2, 8, (4, 4), 72, "bfloat16", {"block_n": 32}),
    "split-fp32-ragged100-2x3-d72": (2, 2, 10, (2, 3), 72, "float32", {"form": "split", "block_n": 16, "chunks": 3}),
    "split-fp32-n1-ragged49": (1, 2, 7, (1, 1), 24, "float32", {"form": "split", "block_n": 16, "chunks": 0}),
    "split-fp16-3x5-d72": (1, 2, 9, (3, 5), 72, "float16", {"form": "split", "block_n": 32, "chunks": 2}),
    "split-bf16-4x4-d72": (2, 1, 8, (4, 4), 72, "bfloat16", {"form": "split", "block_n": 16, "chunks": 4}),
    # head dims as one power-of-two block (64) and as two (40 = 32 + 8 of 16)
    "fused-fp32-d64": (1, 2, 6, (2, 2), 64, "float32", {"block_n": 16}),
    "split-fp32-d64": (1, 2, 6, (2, 2), 64, "float32", {"form": "split", "block_n": 16, "chunks": 2}),
    "fused-fp16-d40": (2, 1, 5, (1, 3), 40, "float16", {"block_n": 16}),
}

#: id -> what is wrong; each must raise ValueError naming it
BAD_INPUTS = {
    "non-square-grid": "square token grid",
    "n129": "1 to 128 mediators",
    "float64": "reads",
    "heads": "does not split",
    "dwc-shape": "dwc_weight",
    "pool-shape": "pool must be",
}

#: (kernel name, dtype, mediators, block_n, num_warps) compiled for sm_90 in the "compile" worker
PTX_CASES = [
    (k, dt, n, bn, w)
    for k in ("mediator_block_kernel", "block_pool_chunk_kernel", "block_gather_chunk_kernel", "block_read_kernel")
    for dt, n, bn, w in (
        ("bfloat16", 16, 64, 4),
        ("bfloat16", 64, 128, 8),
        ("float16", 32, 32, 4),
        ("bfloat16", 128, 64, 8),
    )
]


# ---------------------------------------------------------------------------------------------------------
# Worker side
# ---------------------------------------------------------------------------------------------------------
def _inputs(B, H, G, mgrid, d, dtype, seed=0, strided=False):
    from medexport.model.mediator_dit import pooling_matrix

    g = torch.Generator().manual_seed(seed)
    N, D, n = G * G, H * d, mgrid[0] * mgrid[1]
    if strided:  # qkv as a view into a wider buffer: row stride 3D + 8
        qkv = torch.randn(B, N, 3 * D + 8, generator=g)[..., 4 : 4 + 3 * D]
    else:
        qkv = torch.randn(B, N, 3 * D, generator=g)
    pool = pooling_matrix(G, *mgrid)
    bias_mk, bias_qm = torch.randn(H, n, N, generator=g), torch.randn(H, N, n, generator=g)
    w, b = torch.randn(D, 1, 3, 3, generator=g) * 0.3, torch.randn(D, generator=g)
    return [t.to(dtype) for t in (qkv, pool, bias_mk, bias_qm, w, b)]


def _rel_err(out, truth):
    return ((out.double() - truth).abs().max() / truth.abs().max()).item()


def _worker_interpret():
    from medexport.ops import kernels, mediator_block_reference
    from medexport.ops.kernels import triton_block

    results = {"cases": {}, "bad_inputs": {}}
    real_empty = torch.empty

    def poisoned_empty(*args, **kwargs):  # every output buffer starts as NaN: an unwritten element shows
        t = real_empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    for name, (B, H, G, mgrid, d, dtype, launch) in CASES.items():
        launch = dict(launch)
        ins = _inputs(B, H, G, mgrid, d, getattr(torch, dtype), strided=launch.pop("strided", False))
        scale = d**-0.5
        start = time.perf_counter()
        triton_block.torch.empty = poisoned_empty
        try:
            out = kernels.triton_mediator_block(*ins, H, scale, **launch)
        finally:
            triton_block.torch.empty = real_empty
        seconds = time.perf_counter() - start
        truth = mediator_block_reference(*(t.double() for t in ins), H, scale)
        same = mediator_block_reference(*ins, H, scale)
        results["cases"][name] = {
            "error": _rel_err(out, truth),
            "reference_error": _rel_err(same, truth),
            "shape_ok": tuple(out.shape) == (B, G * G, H * d),
            "dtype_ok": out.dtype == ins[0].dtype,
            "finite": bool(torch.isfinite(out).all()),
            "seconds": seconds,
        }
    for name in BAD_INPUTS:
        B, H, G, mgrid, d = 1, 2, 4, (2, 2), 8
        qkv, pool, bias_mk, bias_qm, w, b = _inputs(B, H, G, mgrid, d, torch.float32)
        heads = H
        if name == "non-square-grid":
            qkv, pool, bias_mk, bias_qm = qkv[:, :12], pool[:, :12], bias_mk[..., :12], bias_qm[:, :12]
        elif name == "n129":
            pool = torch.rand(129, G * G)
            bias_mk, bias_qm = torch.zeros(H, 129, G * G), torch.zeros(H, G * G, 129)
        elif name == "float64":
            qkv = qkv.double()
        elif name == "heads":
            heads = 3
        elif name == "dwc-shape":
            w = w[:, :, :2]
        elif name == "pool-shape":
            pool = pool[:, :-1]
        try:
            kernels.triton_mediator_block(qkv, pool, bias_mk, bias_qm, w, b, heads, d**-0.5)
            results["bad_inputs"][name] = {"raised": None, "message": ""}
        except Exception as exc:
            results["bad_inputs"][name] = {"raised": type(exc).__name__, "message": str(exc)}
    return results


def _worker_compile():
    import triton
    from triton.backends.compiler import GPUTarget

    from medexport.ops.kernels import triton_block

    target = GPUTarget("cuda", 90, 32)
    results = {"ptx": {}}
    for kname, dtype, n, bn, warps in PTX_CASES:
        fn = getattr(triton_block, kname)
        elem = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}[dtype]
        # d = 72 as 64 + 16, as the launch splits it; n = 128 with d = 64 (no second block)
        has_e = n != 128
        constexprs = {
            "SCALE": 72**-0.5,
            "BLOCK_MED": max(16, n),
            "BLOCK_D": 64,
            "BLOCK_E": 16,
            "HAS_E": has_e,
            "BLOCK_W": 80 if has_e else 64,
            "BLOCK_N": bn,
            "UPCAST_DOTS": False,
        }
        signature = {}
        for arg in fn.arg_names:
            if arg in constexprs:
                signature[arg] = "constexpr"
            elif arg.startswith("PART_"):
                signature[arg] = "*fp32"
            elif arg.isupper():
                signature[arg] = f"*{elem}"
            else:
                signature[arg] = "i32"
        constexprs = {k: v for k, v in constexprs.items() if k in fn.arg_names}
        start = time.perf_counter()
        try:
            compiled = triton.compile(
                triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                target=target,
                options={"num_warps": warps},
            )
            results["ptx"][f"{kname}-{dtype}-n{n}-bn{bn}-w{warps}"] = {
                "sm90": ".target sm_90" in compiled.asm["ptx"],
                "shared": compiled.metadata.shared,
                "seconds": time.perf_counter() - start,
                "error": "",
            }
        except Exception as exc:
            results["ptx"][f"{kname}-{dtype}-n{n}-bn{bn}-w{warps}"] = {
                "sm90": False,
                "shared": -1,
                "error": f"{type(exc).__name__}: {exc}",
            }
    return results


WORKERS = {"interpret": _worker_interpret, "compile": _worker_compile}


# ---------------------------------------------------------------------------------------------------------
# Test side
# ---------------------------------------------------------------------------------------------------------
_started: dict[str, subprocess.Popen] = {}


def _start(mode: str) -> subprocess.Popen:
    if mode not in _started:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        env.pop("TRITON_INTERPRET", None)
        if mode == "interpret":
            env["TRITON_INTERPRET"] = "1"
        _started[mode] = subprocess.Popen(
            [sys.executable, __file__, mode],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    return _started[mode]


@pytest.fixture(scope="module")
def workers():
    if HAS_TRITON:
        for mode in WORKERS:
            _start(mode)
    return _started


@pytest.fixture(scope="module")
def interpret(workers):
    return _result("interpret")


@pytest.fixture(scope="module")
def compiled(workers):
    return _result("compile")


def _result(mode: str) -> dict:
    proc = _start(mode)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"worker {mode} failed:\n{err[-4000:]}"
    return json.loads(out.strip().splitlines()[-1])


@needs_triton
@pytest.mark.parametrize("name", list(CASES))
def test_block_kernels_match_float64_reference(interpret, name):
    r = interpret["cases"][name]
    dtype = CASES[name][5]
    assert r["shape_ok"] and r["dtype_ok"] and r["finite"], r
    assert r["error"] < TOLERANCE[dtype], (name, r)
    # no worse than the op at this dtype by more than a rounding step: the kernel accumulates in float32
    assert r["error"] < max(2 * r["reference_error"], TOLERANCE[dtype] / 4), (name, r)


@needs_triton
@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_block_kernels_refuse_bad_operands(interpret, name):
    r = interpret["bad_inputs"][name]
    assert r["raised"] == "ValueError", r
    assert BAD_INPUTS[name] in r["message"], r


@needs_triton
def test_block_kernels_compile_for_hopper(compiled):
    assert len(compiled["ptx"]) == len(PTX_CASES)
    for name, r in compiled["ptx"].items():
        assert r["sm90"], (name, r["error"])
        assert 0 <= r["shared"] <= 227 * 1024, (name, r["shared"])  # fits an H100 / H200 SM


def test_op_reference_is_the_models_decomposed_block():
    """The op's reference equals MediatorAttention's CPU path (the path ONNX export traces) bit for bit."""
    from medexport.core.config import ModelConfig
    from medexport.model.mediator_dit import MediatorAttention
    from medexport.ops import mediator_block

    torch.manual_seed(0)
    attn = MediatorAttention(dim=48, num_heads=4, grid=6, mediators=6, mediator_grid=(2, 3)).eval()
    x = torch.randn(2, 36, 48)
    with torch.no_grad():
        want = attn(x)
        qkv = attn.qkv(x)
        got = attn.proj(
            mediator_block(qkv, attn.pool, attn.bias_mk, attn.bias_qm, attn.dwc.weight, attn.dwc.bias, 4, attn.scale)
        )
    assert torch.equal(got, want)
    assert ModelConfig  # the config module imports alongside the model


def test_op_registration_passes_opcheck():
    from medexport.model.mediator_dit import pooling_matrix
    from medexport.ops.mediator_block import mediator_block

    g = torch.Generator().manual_seed(1)
    H, G, d, n = 2, 4, 8, 4
    args = (
        torch.randn(2, G * G, 3 * H * d, generator=g, requires_grad=True),
        pooling_matrix(G, 2, 2),
        torch.randn(H, n, G * G, generator=g),
        torch.randn(H, G * G, n, generator=g),
        torch.randn(H * d, 1, 3, 3, generator=g),
        torch.randn(H * d, generator=g),
        H,
        d**-0.5,
    )
    torch.library.opcheck(mediator_block, args)


def test_torch_compile_takes_the_op_without_graph_breaks():
    """inductor compiles a function around the op in one graph (fullgraph=True fails on any break) and fuses the
    ops around it; the result equals eager."""
    from medexport.model.mediator_dit import pooling_matrix
    from medexport.ops.mediator_block import mediator_block

    g = torch.Generator().manual_seed(2)
    H, G, d, n = 2, 4, 8, 4
    w = torch.randn(3 * H * d, H * d, generator=g) * 0.2

    def block(x, pool, bias_mk, bias_qm, dwc_w, dwc_b):
        qkv = torch.nn.functional.gelu(x @ w.T)
        return mediator_block(qkv, pool, bias_mk, bias_qm, dwc_w, dwc_b, H, d**-0.5).sigmoid() * 2

    args = (
        torch.randn(2, G * G, H * d, generator=g),
        pooling_matrix(G, 2, 2),
        torch.randn(H, n, G * G, generator=g),
        torch.randn(H, G * G, n, generator=g),
        torch.randn(H * d, 1, 3, 3, generator=g),
        torch.randn(H * d, generator=g),
    )
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True)
    torch.testing.assert_close(compiled(*args), block(*args), rtol=1e-5, atol=1e-5)


def test_op_refuses_non_square_grid_with_a_clear_error():
    from medexport.ops.mediator_block import mediator_block_reference

    with pytest.raises(ValueError, match="square token grid"):
        mediator_block_reference(
            torch.randn(1, 12, 24),
            torch.rand(4, 12),
            torch.zeros(2, 4, 12),
            torch.zeros(2, 12, 4),
            torch.zeros(8, 1, 3, 3),
            torch.zeros(8),
            2,
            0.5,
        )


def test_block_forms_choose_the_fastest_correct_candidate(monkeypatch, tmp_path):
    from medexport.ops.kernels import block_forms as bf

    monkeypatch.setenv("MEDEXPORT_CACHE_DIR", str(tmp_path))
    bf._kept.cache_clear()

    truth = torch.ones(4)
    speed = {c.name: 1.0 + i for i, c in enumerate(bf.CANDIDATES)}
    wrong = bf.CANDIDATES[0].name  # the fastest by the fake timer, but its result is off: never chosen
    ran = []

    def run(c):
        ran.append(c.name)
        return truth * (2.0 if c.name == wrong else 1.0)

    def timer(fn):
        fn()
        return speed[ran[-1]]

    key = ("test-gpu", "torch.float32", 1, 2, 16, 4, 8)
    bf._chosen.pop(key, None)
    try:
        chosen = bf.choose(key, run, lambda: truth, capturing=False, timer=timer)
        assert chosen == bf.CANDIDATES[1] and chosen.name != wrong
        times = bf.measurements()[key][1]
        assert times[wrong] is None and times[bf.CANDIDATES[1].name] == speed[bf.CANDIDATES[1].name]
        # measured once: a second call neither runs nor times anything
        ran.clear()
        assert bf.choose(key, run, lambda: truth, capturing=False, timer=timer) == chosen and not ran
        with bf.forced_form("reference"):
            assert bf.choose(key, run, lambda: truth, capturing=False).form == "reference"
        with bf.forced_form("split"):
            assert bf.choose(key, run, lambda: truth, capturing=False).form == "split"
        other = key[:-1] + (16,)
        assert bf.choose(other, run, lambda: truth, capturing=True) == bf.DEFAULT  # no measuring in a capture
        assert other not in bf.measurements()
        # kept for later processes: a new process recalls the choice without running anything
        kept = json.loads((tmp_path / "block_forms.json").read_text())
        assert list(kept.values()) == [chosen.name] and "test-gpu" in next(iter(kept))
        bf._chosen.pop(key)
        bf._kept.cache_clear()
        assert bf.choose(key, run, lambda: truth, capturing=False, timer=timer) == chosen and not ran
        # fresh measures again
        assert bf.choose(key, run, lambda: truth, capturing=False, timer=timer, fresh=True) == chosen and ran
    finally:
        bf._chosen.pop(key, None)
        bf._kept.cache_clear()
    with pytest.raises(ValueError, match="must be one of"):
        with bf.forced_form("fastest"):
            pass


def test_block_forms_env_setting_is_checked(monkeypatch):
    from medexport.ops.kernels import block_forms as bf

    monkeypatch.setenv(bf.ENV, "Split")
    assert bf.requested_form() == "split"
    monkeypatch.setenv(bf.ENV, "turbo")
    with pytest.raises(ValueError, match="MEDEXPORT_BLOCK_FORM='turbo'"):
        bf.requested_form()


@needs_triton
def test_cuda_impl_falls_back_or_says_why(monkeypatch):
    """Operands the kernels do not take (here 129 mediators) run the reference under auto; a pinned kernel form
    refuses them with an error that names the variable and the fallback, never a Triton traceback."""
    from medexport.errors import BackendUnavailableError
    from medexport.ops import kernels
    from medexport.ops.kernels import block_forms
    from medexport.ops.mediator_block import mediator_block_reference

    g = torch.Generator().manual_seed(3)
    H, G, d, n = 2, 4, 8, 129
    args = (
        torch.randn(1, G * G, 3 * H * d, generator=g),
        torch.rand(n, G * G, generator=g),
        torch.randn(H, n, G * G, generator=g),
        torch.randn(H, G * G, n, generator=g),
        torch.randn(H * d, 1, 3, 3, generator=g),
        torch.randn(H * d, generator=g),
        H,
        d**-0.5,
    )
    monkeypatch.delenv(block_forms.ENV, raising=False)
    assert torch.equal(kernels._cuda_block_impl(*args), mediator_block_reference(*args))
    monkeypatch.setenv(block_forms.ENV, "fused")
    with pytest.raises(BackendUnavailableError, match="1 to 128 mediators.*unset MEDEXPORT_BLOCK_FORM"):
        kernels._cuda_block_impl(*args)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    print(json.dumps(WORKERS[sys.argv[1]]()))
