"""The fused Triton mediator-attention kernel against the reference op, on the CPU.

Triton runs kernels on CPU tensors only in interpreter mode, and ``TRITON_INTERPRET=1`` must be set before
triton is imported, which the rest of the suite (through torch) may already have done. So the kernels run in
worker subprocesses: this file is also the worker script (``python test_triton_mediator.py MODE``), each mode
prints one JSON object, and the tests assert on it. The workers start together when the module's first test
runs and work while the in-process tests (opcheck) run. Modes:

* ``interpret`` (TRITON_INTERPRET=1): every case of CASES against the float64 reference, plus the errors the
  kernel raises for shapes it does not take.
* ``compile`` (no interpreter): the kernel compiled ahead of time to PTX for sm_90, as the TensorRT plugin does
  (no GPU is needed to compile), checking the launch contract the plugin relies on; CPU tensors refused outside
  the interpreter; register_cuda_kernel's choice and idempotency.
* ``no-triton`` (triton made unimportable): ``medexport.ops.kernels`` imports, says why it cannot run, and
  register_cuda_kernel falls back to the reference.

bfloat16: in the interpreter ``tl.dot`` on bfloat16 operands gives wrong results (a known limitation), so for
bfloat16 CPU tensors the kernel loads and stores bfloat16 but computes its dots in float32
(``triton_mediator.upcast_dots``). The bfloat16 cases therefore test the bfloat16 memory path and rounding, not
bfloat16 tensor-core dots, which only a GPU run can check.

Errors are max |o - truth| / max |truth|, truth = the reference op in float64 on the same (rounded) inputs.
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

#: Largest relative error accepted per dtype (the kernel accumulates in float32 whatever the input dtype).
TOLERANCE = {"float32": 1e-5, "float16": 1e-2, "bfloat16": 2e-2}

#: id -> (B, H, N, n, d, dtype, launch overrides). Tiny shapes: the interpreter runs a tile in numpy.
CASES = {
    "fp32-n16-d64": (1, 2, 64, 16, 64, "float32", {}),
    "fp32-n32-d72-ragged100-batch2": (2, 2, 100, 32, 72, "float32", {"block_n": 32}),  # 4 tiles, last 4 keys
    "fp32-n1-ragged37": (1, 2, 37, 1, 64, "float32", {"block_n": 16}),
    "fp32-n128": (1, 1, 48, 128, 64, "float32", {"block_n": 16}),
    "fp32-n7-d72-splits3": (2, 2, 100, 7, 72, "float32", {"block_n": 16, "splits": 3}),  # programs share tiles
    "fp32-strided-views": (2, 2, 64, 16, 72, "float32", {"strided": True}),
    "fp16-n32-d72": (2, 2, 64, 32, 72, "float16", {"block_n": 32}),
    "fp16-n1-ragged37": (1, 1, 37, 1, 64, "float16", {}),
    "fp16-n128-d64": (1, 1, 32, 128, 64, "float16", {}),
    "bf16-n16-d72": (2, 2, 64, 16, 72, "bfloat16", {"block_n": 32}),
    "bf16-n32-ragged100": (1, 2, 100, 32, 64, "bfloat16", {"block_n": 32}),
    # the split-N form: stage 1 over chunks of keys, merged, stage 2 over every query tile
    "split-fp32-n32-d72-ragged100": (2, 2, 100, 32, 72, "float32", {"block_n": 32, "chunks": 3}),
    "split-fp32-n1-ragged37": (1, 2, 37, 1, 64, "float32", {"block_n": 16, "chunks": 4}),
    "split-fp32-strided-views": (2, 2, 64, 16, 72, "float32", {"block_n": 16, "chunks": 2, "strided": True}),
    "split-fp16-n128-default-chunks": (1, 1, 48, 128, 64, "float16", {"block_n": 16, "chunks": 0}),
    "split-bf16-n16-d72": (2, 2, 64, 16, 72, "bfloat16", {"block_n": 16, "chunks": 2}),
}

#: id -> (B, H, N, n, d, dtype, what is wrong) for inputs the kernel must refuse with ValueError.
BAD_INPUTS = {
    "n129": (1, 1, 256, 129, 16, "float32", "mediators"),
    "m-head-dim-mismatch": (1, 2, 16, 4, 8, "float32", "m-shape"),
    "bias-shape": (1, 2, 16, 4, 8, "float32", "bias-shape"),
    "mixed-dtypes": (1, 2, 16, 4, 8, "float32", "mixed-dtypes"),
    "float64": (1, 2, 16, 4, 8, "float64", "dtype"),
}

#: (dtype, n, d) compiled to PTX for sm_90 in the "compile" worker.
PTX_CASES = [("float16", 32, 72), ("bfloat16", 128, 64), ("float32", 16, 72)]


# ---------------------------------------------------------------------------------------------------------
# Worker side (runs in a subprocess)
# ---------------------------------------------------------------------------------------------------------
def _inputs(B, H, N, n, d, dtype, seed=0, strided=False):
    g = torch.Generator().manual_seed(seed)
    if strided:  # q, k, v as the model makes them: views of one (B, N, 3, H, d) projection; bias_qm a transpose
        qkv = torch.randn(B, N, 3, H, d, generator=g).permute(2, 0, 3, 1, 4)  # (3, B, H, N, d), strided
        q, k, v = qkv[0], qkv[1], qkv[2]
        bias_qm = torch.randn(H, n, N, generator=g).transpose(1, 2)  # (H, N, n), last dim not contiguous
    else:
        q, k, v = (torch.randn(B, H, N, d, generator=g) for _ in range(3))
        bias_qm = torch.randn(H, N, n, generator=g)
    m = torch.randn(B, H, n, d, generator=g)
    bias_mk = torch.randn(H, n, N, generator=g)
    return [t.to(dtype) for t in (q, k, v, m, bias_mk, bias_qm)]


def _rel_err(out, truth):
    return ((out.double() - truth).abs().max() / truth.abs().max()).item()


def _worker_interpret():
    from medexport.ops import kernels, mediator_attention_reference

    results = {"cases": {}, "bad_inputs": {}}
    for name, (B, H, N, n, d, dtype, launch) in CASES.items():
        launch = dict(launch)
        ins = _inputs(B, H, N, n, d, getattr(torch, dtype), strided=launch.pop("strided", False))
        scale = d**-0.5
        start = time.perf_counter()
        out = kernels.triton_mediator_attention(*ins, scale, **launch)
        seconds = time.perf_counter() - start
        truth = mediator_attention_reference(*(t.double() for t in ins), scale)
        same_dtype_ref = mediator_attention_reference(*ins, scale)  # the op itself at this dtype, for scale
        results["cases"][name] = {
            "error": _rel_err(out, truth),
            "reference_error": _rel_err(same_dtype_ref, truth),
            "shape_ok": tuple(out.shape) == (B, H, N, d),
            "dtype_ok": out.dtype == ins[0].dtype,
            "finite": bool(torch.isfinite(out).all()),
            "seconds": seconds,
        }
    for name, (B, H, N, n, d, dtype, what) in BAD_INPUTS.items():
        q, k, v, m, bias_mk, bias_qm = _inputs(B, H, N, n, d, getattr(torch, dtype))
        if what == "m-shape":
            m = m[..., :-1]
        elif what == "bias-shape":
            bias_qm = bias_qm[:, :-1]
        elif what == "mixed-dtypes":
            k = k.half()
        try:
            kernels.triton_mediator_attention(q, k, v, m, bias_mk, bias_qm, d**-0.5)
            results["bad_inputs"][name] = {"raised": None, "message": ""}
        except Exception as exc:  # report the type; the test decides whether it is the right one
            results["bad_inputs"][name] = {"raised": type(exc).__name__, "message": str(exc)}
    return results


def _worker_compile():
    import re

    from triton.backends.compiler import GPUTarget

    from medexport.ops import kernels, mediator_attention_reference
    from medexport.ops.kernels import triton_mediator

    results = {"ptx": {}}
    for dtype, n, d in PTX_CASES:
        start = time.perf_counter()
        compiled = triton_mediator.compile_kernel(
            getattr(torch, dtype), n, d, d**-0.5, target=GPUTarget("cuda", 90, 32)
        )
        md, ptx = compiled.metadata, compiled.asm["ptx"]
        entry = re.search(r"\.entry\s+(\w+)\s*\((.*?)\)", ptx, re.DOTALL)
        params = re.findall(r"\.param\s+\.(\w+)", entry.group(2)) if entry else []
        results["ptx"][f"{dtype}-n{n}-d{d}"] = {
            "name": md.name,
            "entry": entry.group(1) if entry else None,
            "param_types": params,
            "num_warps": md.num_warps,
            "shared": md.shared,
            "global_scratch": md.global_scratch_size,
            "profile_scratch": md.profile_scratch_size,
            "num_ctas": md.num_ctas,
            "seconds": time.perf_counter() - start,
        }
    results["num_scalar_args"] = len(triton_mediator.SCALAR_ARGS)
    results["split_ptx"] = {}
    for dtype, n, d in PTX_CASES:  # the split-N form's two kernels compile for Hopper too
        for fn in (triton_mediator.mediator_gather_chunk_kernel, triton_mediator.mediator_read_kernel):
            results["split_ptx"][f"{fn.__name__}-{dtype}-n{n}-d{d}"] = _compile_split(
                fn, dtype, n, d, GPUTarget("cuda", 90, 32)
            )

    ins = _inputs(1, 1, 16, 4, 16, torch.float32)
    try:
        kernels.triton_mediator_attention(*ins, 0.25)
        results["cpu_outside_interpreter"] = {"raised": None, "message": ""}
    except Exception as exc:
        results["cpu_outside_interpreter"] = {"raised": type(exc).__name__, "message": str(exc)}

    first, second = kernels.register_cuda_kernel(), kernels.register_cuda_kernel()
    out = torch.ops.medexport.mediator_attention(*ins, 0.25)  # CPU: still the reference
    results["register"] = {
        "first": first,
        "second": second,
        "recorded": kernels.registered_cuda_kernel(),
        "cpu_op_error": _rel_err(out, mediator_attention_reference(*ins, 0.25)),
    }
    return results


def _compile_split(fn, dtype: str, n: int, d: int, target) -> str:
    """The entry name of ``fn`` compiled ahead of time for ``target`` (pointers of ``dtype``, float32 partials)."""
    import triton

    from medexport.ops.kernels import triton_mediator

    elem = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}[dtype]
    cfg = triton_mediator.block_sizes(n, d, None, 64)
    constexprs = {
        "SCALE": d**-0.5,
        "BLOCK_MED": cfg["BLOCK_MED"],
        "BLOCK_D": cfg["BLOCK_D"],
        "BLOCK_N": cfg["BLOCK_N"],
        "UPCAST_DOTS": False,
    }
    signature = {}
    for name in fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.startswith("PART_"):
            signature[name] = "*fp32"
        elif name.isupper():
            signature[name] = f"*{elem}"
        else:
            signature[name] = "i32"
    src = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    compiled = triton.compile(src, target=target, options={"num_warps": cfg["num_warps"]})
    return compiled.metadata.name if ".target sm_90" in compiled.asm["ptx"] else ""


def _worker_no_triton():
    sys.modules["triton"] = None  # any `import triton` now raises ImportError
    from medexport.errors import BackendUnavailableError
    from medexport.ops import kernels

    results = {"available": kernels.triton_available()}
    ins = _inputs(1, 1, 16, 4, 16, torch.float32)
    try:
        kernels.triton_mediator_attention(*ins, 0.25)
        results["call"] = {"raised": None, "message": ""}
    except BackendUnavailableError as exc:
        results["call"] = {"raised": "BackendUnavailableError", "message": str(exc)}
    results["register"] = [kernels.register_cuda_kernel(), kernels.register_cuda_kernel()]
    return results


WORKERS = {"interpret": _worker_interpret, "compile": _worker_compile, "no-triton": _worker_no_triton}


# ---------------------------------------------------------------------------------------------------------
# Test side
# ---------------------------------------------------------------------------------------------------------
class Workers:
    """The worker subprocesses, started together; ``result(mode)`` waits for one and parses its JSON."""

    def __init__(self, modes):
        self.procs, self.results = {}, {}
        for mode in modes:
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
            env.pop("TRITON_INTERPRET", None)
            if mode == "interpret":
                env["TRITON_INTERPRET"] = "1"
            env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # triton 3.9 warns when it is unset
            self.procs[mode] = subprocess.Popen(
                [sys.executable, __file__, mode],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )

    def result(self, mode):
        if mode not in self.results:
            out, err = self.procs[mode].communicate(timeout=300)
            if self.procs[mode].returncode != 0:
                pytest.fail(f"worker {mode!r} failed (exit {self.procs[mode].returncode}):\n{err[-4000:]}")
            self.results[mode] = json.loads(out.strip().splitlines()[-1])
        return self.results[mode]

    def close(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


@pytest.fixture(scope="module", autouse=True)
def workers():
    pool = Workers(WORKERS if HAS_TRITON else ["no-triton"])
    yield pool
    pool.close()


def test_opcheck_cpu_registration():
    """The op's registration (schema, fake tensor, autograd, AOT dispatch) with CPU inputs."""
    import medexport.ops  # noqa: F401  (registers the op)

    g = torch.Generator().manual_seed(0)
    B, H, N, n, d = 2, 2, 12, 4, 8
    args = [torch.randn(B, H, N, d, generator=g) for _ in range(3)]
    args += [torch.randn(B, H, n, d, generator=g), torch.randn(H, n, N, generator=g), torch.randn(H, N, n, generator=g)]
    args = [t.requires_grad_() for t in args] + [d**-0.5]
    torch.library.opcheck(torch.ops.medexport.mediator_attention.default, args)


@needs_triton
@pytest.mark.parametrize("case", list(CASES))
def test_kernel_matches_reference(workers, case):
    dtype = CASES[case][5]
    r = workers.result("interpret")["cases"][case]
    assert r["shape_ok"] and r["dtype_ok"] and r["finite"], r
    assert r["error"] < TOLERANCE[dtype], (
        f"{case}: relative error {r['error']:.3g} (the op at {dtype}: {r['reference_error']:.3g})"
    )


@needs_triton
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_kernel_refuses_bad_inputs(workers, case):
    r = workers.result("interpret")["bad_inputs"][case]
    assert r["raised"] == "ValueError", r
    if case == "n129":
        assert "128" in r["message"]


@needs_triton
def test_interpreter_cases_are_quick(workers):
    """The interpreter budget: every kernel call above stays small (the file must run in about a minute)."""
    seconds = {k: v["seconds"] for k, v in workers.result("interpret")["cases"].items()}
    assert max(seconds.values()) < 20, seconds


def test_the_split_n_kernels_compile_for_hopper(workers):
    split = workers.result("compile")["split_ptx"]
    assert len(split) == 2 * len(PTX_CASES)
    assert all(name.startswith(("mediator_gather_chunk_kernel", "mediator_read_kernel")) for name in split.values()), (
        split
    )


@needs_triton
@pytest.mark.parametrize("dtype,n,d", PTX_CASES)
def test_kernel_compiles_to_ptx_for_the_plugin(workers, dtype, n, d):
    """What the TensorRT AOT plugin embeds: one entry, (6 input pointers, int32 scalars, output pointer), then
    only Triton's hidden scratch pointers, which TensorRT passes as null; no scratch memory or special launch."""
    r = workers.result("compile")
    ptx = r["ptx"][f"{dtype}-n{n}-d{d}"]
    num_scalars = r["num_scalar_args"]
    assert ptx["entry"] == ptx["name"] == "mediator_attention_kernel"
    types = ptx["param_types"]
    assert types[:6] == ["u64"] * 6 and types[6 : 6 + num_scalars] == ["u32"] * num_scalars, types
    assert types[6 + num_scalars] == "u64" and all(t == "u64" for t in types[7 + num_scalars :]), types
    assert ptx["global_scratch"] == 0 and ptx["profile_scratch"] == 0 and ptx["num_ctas"] == 1, ptx
    assert ptx["num_warps"] in (4, 8)


@needs_triton
def test_cpu_tensors_need_the_interpreter(workers):
    r = workers.result("compile")["cpu_outside_interpreter"]
    assert r["raised"] == "ValueError" and "TRITON_INTERPRET" in r["message"], r


@needs_triton
def test_register_cuda_kernel_is_idempotent(workers):
    r = workers.result("compile")["register"]
    assert r["first"] == r["second"] == r["recorded"] == "triton", r
    assert r["cpu_op_error"] == 0.0, r  # the CPU implementation is untouched


def test_without_triton(workers):
    r = workers.result("no-triton")
    assert r["available"][0] is False and "triton" in r["available"][1]
    assert r["call"]["raised"] == "BackendUnavailableError" and "triton" in r["call"]["message"], r
    assert r["register"] == ["reference", "reference"], r


if __name__ == "__main__":
    json.dump(WORKERS[sys.argv[1]](), sys.stdout)
    sys.stdout.write("\n")
