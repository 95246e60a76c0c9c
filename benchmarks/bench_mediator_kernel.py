"""Benchmark the mediator block on a CUDA GPU: its Triton kernels against the decomposed block and full attention.

The block table (always): for SiT-XL/2 shapes (H = 16, d = 72), token counts N, mediator counts n and batches B,
everything between the qkv and the output projection (``torch.ops.medexport.mediator_block``) timed as

* ``vanilla``: what a vanilla SiT block does there: split qkv into heads, SDPA full attention, back to tokens,
* ``decomposed``: the mediator block as the model ran it before the fused kernels (a pooling matmul, the
  ``mediator_attention`` op at its measured form, the conv of v in image layout, the residual add),
* ``fused`` / ``split``: the Triton kernels (``kernels/triton_block.py``), each at its fastest launch,
* ``op``: what the CUDA op runs for that shape (``block_forms`` measures the candidates at first use),

with the op's achieved bandwidth (bytes: qkv read once, o written once, biases, pooling matrix and conv weights)
as a share of the measured device-to-device copy bandwidth, the op against vanilla, and every form's error
against float64. ``--smoke`` runs the same code on the CPU under the Triton interpreter with tiny shapes (CI).

The op table (``--op``): the ``mediator_attention`` op alone. For SiT-XL/2 attention shapes (H = 16 heads, head dim d = 72) and every combination of token count N, mediator
count n and batch B, times

* ``reference``: the op's plain-PyTorch implementation (matmul, softmax, matmul, twice; scores in memory),
* ``sdpa x2``: two ``F.scaled_dot_product_attention`` calls with the position biases as float masks,
* ``triton``: the fused kernel (``medexport.ops.kernels.triton_mediator_attention``, default launch),
* ``split-N``: the same kernels' split-N form (stage 1 over chunks of keys, merged, stage 2 per query tile),
* ``full attn``: plain self-attention over the same N tokens through SDPA (what mediators replace),

and reports each time, the kernel's achieved bandwidth against the minimum bytes mediator attention must move
(read q, k, v, m and both biases once, write o once), that bandwidth as a share of the measured device-to-device
copy bandwidth, and the other methods' times as multiples of the kernel's. Every method is checked against the
reference in float32 before it is timed.

    python benchmarks/bench_mediator_kernel.py                 # the block table, bfloat16
    python benchmarks/bench_mediator_kernel.py --smoke         # the same on the CPU, tiny shapes (interpreter)
    python benchmarks/bench_mediator_kernel.py --op            # also the attention-op table
    python benchmarks/bench_mediator_kernel.py --seq 1024 --mediators 32 --batch 8
    python benchmarks/bench_mediator_kernel.py --sweep      # also every launch (block_n x splits) per shape

Prints a Markdown table (paste it into benchmarks/RESULTS.md with the GPU, driver and versions).
"""

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

HEADS, HEAD_DIM = 16, 72  # SiT-XL/2: hidden 1152 over 16 heads


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seq", type=int, nargs="+", default=[256, 1024, 4096], help="token counts N")
    p.add_argument("--mediators", type=int, nargs="+", default=[16, 32, 64], help="mediator counts n")
    p.add_argument("--batch", type=int, nargs="+", default=[2, 8, 32], help="batch sizes B")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    p.add_argument("--warmup", type=int, default=25, help="warm-up time per measurement, ms (do_bench)")
    p.add_argument("--rep", type=int, default=100, help="measured time per measurement, ms (do_bench)")
    p.add_argument(
        "--write-table",
        type=Path,
        default=None,
        metavar="JSON",
        help="also write the measured ms of every form per shape as the op's form table (e.g. "
        "medexport/ops/kernels/forms.json, from which the CUDA op picks the fastest form per shape)",
    )
    p.add_argument(
        "--sweep",
        action="store_true",
        help="also time the kernel at every launch (block_n x splits) and compare the best to the default",
    )
    p.add_argument("--op", action="store_true", help="also the mediator_attention op table (and --write-table)")
    p.add_argument("--block-batch", type=int, nargs="+", default=[1, 8, 16, 64], help="batch sizes of the block table")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="run the block table on the CPU under the Triton interpreter with tiny shapes (a check that "
        "the script works, not a measurement)",
    )
    return p.parse_args()


# ---------------------------------------------------------------------------------------------------------
# The block table
# ---------------------------------------------------------------------------------------------------------
def block_operands(B: int, N: int, n: int, H: int, d: int, dtype: torch.dtype, device: str) -> tuple:
    from medexport.ops.kernels.triton_block import example_operands

    return example_operands(B, N, n, H, d, dtype, device)


def vanilla_between_projections(qkv: torch.Tensor, H: int) -> torch.Tensor:
    """What a vanilla DiT block runs between its projections (FullAttention.forward without them)."""
    B, N, D3 = qkv.shape
    q, k, v = qkv.reshape(B, N, 3, H, D3 // 3 // H).permute(2, 0, 3, 1, 4).unbind(0)
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, D3 // 3)


def block_row(B: int, N: int, n: int, H: int, d: int, dtype: torch.dtype, device: str, timer, peak: float) -> str:
    """One row of the block table."""
    from medexport.ops.kernels import block_forms, triton_mediator_block
    from medexport.ops.mediator_block import mediator_block_reference

    ins = block_operands(B, N, n, H, d, dtype, device)
    truth = mediator_block_reference(*(t.double() if isinstance(t, torch.Tensor) else t for t in ins))
    scale = truth.abs().max().item()

    def run(c):
        return (
            mediator_block_reference(*ins)
            if c.form == "reference"
            else triton_mediator_block(*ins, form=c.form, **c.launch)
        )

    key = block_forms.shape_key(ins[0], ins[1], H)
    with block_forms.forced_form("auto"):  # measured afresh, and kept for the op as it would keep it
        chosen = block_forms.choose(key, run, lambda: mediator_block_reference(*ins), False, timer=timer, fresh=True)
    times = block_forms.measurements()[key][1]
    best = {}
    for form in ("fused", "split", "reference"):
        ok = [c for c in block_forms.CANDIDATES if c.form == form and times.get(c.name) is not None]
        best[form] = min(ok, key=lambda c: times[c.name]) if ok else None
    ms = {form: (timer(lambda c=c: run(c)) if c is not None else float("nan")) for form, c in best.items()}
    op_ms = ms[chosen.form] if chosen.form != "reference" else ms["reference"]
    vanilla = timer(lambda: vanilla_between_projections(ins[0], H))
    err = {
        form: ((run(c).double() - truth).abs().max().item() / scale if c is not None else float("nan"))
        for form, c in best.items()
    }
    elem = torch.finfo(dtype).bits // 8
    D = H * d
    nbytes = elem * (4 * B * N * D + 2 * H * n * N + n * N + 10 * D)
    share = nbytes / (op_ms * 1e-3) / peak if peak else float("nan")
    return (
        f"| {N} | {n} | {B} | {vanilla:.3f} | {ms['reference']:.3f} | {ms['fused']:.3f} | {ms['split']:.3f} "
        f"| {op_ms:.3f} {chosen.name} | {100 * share:.0f}% | {op_ms / vanilla:.2f} | {ms['reference'] / op_ms:.2f} "
        f"| {err['fused']:.1e} | {err['split']:.1e} | {err['reference']:.1e} |"
    )


BLOCK_HEADER = (
    "| N | n | B | vanilla ms | decomposed ms | fused ms | split ms | op ms (form) | op % of copy "
    "| op / vanilla | decomposed / op | fused err | split err | decomposed err |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def cpu_timer(fn) -> float:
    import time

    fn()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * sorted(times)[1]


def smoke() -> int:
    """The block table on the CPU under the Triton interpreter, tiny shapes: the script's own check."""
    import os

    if os.environ.get("TRITON_INTERPRET") != "1":
        print(
            "bench_mediator_kernel --smoke: set TRITON_INTERPRET=1 (the Triton interpreter runs the kernels on "
            "the CPU)",
            file=sys.stderr,
        )
        return 1
    print("CPU smoke run (Triton interpreter, tiny shapes): the numbers check the script, they measure nothing\n")
    print(BLOCK_HEADER)
    for N, n, B in ((16, 4, 1), (36, 6, 2)):
        print(block_row(B, N, n, 2, 8, torch.float32, "cpu", cpu_timer, 0.0), flush=True)
    return 0


def copy_bandwidth(do_bench, nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth in bytes/s (read + write counted), the practical peak."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=25, rep=200)
    return 2 * nbytes / (ms * 1e-3)


def operands(B: int, N: int, n: int, dtype: torch.dtype) -> tuple:
    """Seeded random q, k, v, m, both biases (SiT-XL/2 heads) and the scale, on the GPU."""
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(B, HEADS, N, HEAD_DIM, generator=g, device="cuda", dtype=dtype) for _ in range(3))
    m = torch.randn(B, HEADS, n, HEAD_DIM, generator=g, device="cuda", dtype=dtype)
    bias_mk = torch.randn(HEADS, n, N, generator=g, device="cuda", dtype=dtype)
    bias_qm = torch.randn(HEADS, N, n, generator=g, device="cuda", dtype=dtype)
    return q, k, v, m, bias_mk, bias_qm, HEAD_DIM**-0.5


def bench_one(B: int, N: int, n: int, dtype: torch.dtype, args, do_bench, peak: float) -> tuple[str, dict] | None:
    """One table row and the ms of each form, or None (after saying why on stderr) when a method disagrees with
    the reference."""
    from medexport.ops import mediator_attention_reference
    from medexport.ops.kernels import triton_mediator_attention
    from medexport.ops.kernels.forms import sdpa_mediator_attention

    ins = operands(B, N, n, dtype)
    q, k, v, m, bias_mk, bias_qm, scale = ins

    methods = {
        "reference": lambda: mediator_attention_reference(*ins),
        "sdpa": lambda: sdpa_mediator_attention(*ins),
        "triton": lambda: triton_mediator_attention(*ins),
        "split": lambda: triton_mediator_attention(*ins, chunks=0),  # the split-N form, default chunks
    }
    # Truth in float64 from the same rounded inputs. The bfloat16 reference itself drifts (its softmax over N
    # keys rounds to bfloat16), so errors are reported, and only a method far off (> 10%) stops the run.
    truth = mediator_attention_reference(*(t.double() for t in ins[:6]), scale)
    errors = {}
    for name, fn in methods.items():
        errors[name] = ((fn().double() - truth).abs().max() / truth.abs().max()).item()
        if errors[name] > 0.1:
            print(
                f"bench_mediator_kernel: {name} is wrong at N={N} n={n} B={B} (relative error "
                f"{errors[name]:.3g}); not timing it",
                file=sys.stderr,
            )
            return None
    ms = {name: do_bench(fn, warmup=args.warmup, rep=args.rep) for name, fn in methods.items()}
    ms["full"] = do_bench(
        lambda: F.scaled_dot_product_attention(q, k, v, scale=scale), warmup=args.warmup, rep=args.rep
    )

    # The least mediator attention can move: every input read once, o written once.
    elem = torch.finfo(dtype).bits // 8
    min_bytes = elem * (4 * B * HEADS * N * HEAD_DIM + B * HEADS * n * HEAD_DIM + 2 * HEADS * n * N)
    t = ms["triton"]
    tbs = min_bytes / (t * 1e-3)
    return ms, (
        f"| {N} | {n} | {B} | {ms['reference']:.3f} | {ms['sdpa']:.3f} | {t:.3f} | {ms['full']:.3f} "
        f"| {tbs / 1e12:.2f} | {100 * tbs / peak:.0f}% | {ms['reference'] / t:.2f} | {ms['sdpa'] / t:.2f} "
        f"| {ms['full'] / t:.2f} | {ms['split']:.3f} | {t / ms['split']:.2f} | {errors['triton']:.1e} "
        f"| {errors['split']:.1e} | {errors['reference']:.1e} |"
    )


def sweep_one(B: int, N: int, n: int, dtype: torch.dtype, args, do_bench) -> str:
    """One row of the launch sweep: the default launch against the fastest (block_n, splits) that is correct."""
    from medexport.ops import mediator_attention_reference
    from medexport.ops.kernels import triton_mediator as tm

    ins = operands(B, N, n, dtype)
    q, k, v, m, bias_mk, bias_qm, scale = ins
    truth = mediator_attention_reference(*(t.double() for t in ins[:6]), scale)
    default = (
        tm.block_sizes(n, HEAD_DIM, N)["BLOCK_N"],
        tm.default_splits(B * HEADS, -(-N // tm.block_sizes(n, HEAD_DIM, N)["BLOCK_N"]), q.device),
    )
    times = {}
    for block_n in (16, 32, 64, 128):
        tiles = -(-N // block_n)
        for splits in sorted({1, 2, 4, 8, 16, 32, default[1]}):
            if splits > tiles:
                continue
            fn = lambda: tm.triton_mediator_attention(*ins, block_n=block_n, splits=splits)  # noqa: E731
            try:
                err = ((fn().double() - truth).abs().max() / truth.abs().max()).item()
            except Exception as exc:  # a launch the GPU cannot hold (registers, shared memory)
                print(
                    f"bench_mediator_kernel: block_n={block_n} splits={splits} at N={N} n={n}: {exc}", file=sys.stderr
                )
                continue
            if err <= 3e-2:
                times[block_n, splits] = do_bench(fn, warmup=args.warmup, rep=max(10, args.rep // 4))
    best = min(times, key=times.get)
    return (
        f"| {N} | {n} | {B} | {times[default]:.3f} ({default[0]}, {default[1]}) | {times[best]:.3f} "
        f"({best[0]}, {best[1]}) | {times[default] / times[best]:.2f} |"
    )


def write_table(path: Path, gpu: str, dtype: str, rows: list[dict]) -> None:
    """The op's form table (medexport.ops.kernels.forms): the measured ms of every form per shape."""
    import datetime

    import triton

    from medexport.core.files import write_json

    write_json(
        path,
        {
            "gpu": gpu,
            "dtype": dtype,
            "rows": rows,
            "source": f"bench_mediator_kernel.py on one {gpu}, torch {torch.__version__}, triton "
            f"{triton.__version__}, {datetime.date.today()}",
        },
    )


def main() -> int:
    args = parse_args()
    if args.smoke:
        return smoke()
    if not torch.cuda.is_available():
        print(
            "bench_mediator_kernel: no CUDA device here; this benchmark measures GPU kernels and needs one.",
            file=sys.stderr,
        )
        return 1
    try:
        from triton.testing import do_bench
    except ImportError:
        print("bench_mediator_kernel: triton is not installed (pip install 'medexport[triton]').", file=sys.stderr)
        return 1
    dtype = getattr(torch, args.dtype)
    peak = copy_bandwidth(do_bench)
    props = torch.cuda.get_device_properties(0)
    print(
        f"GPU: {props.name} ({props.multi_processor_count} SMs), torch {torch.__version__}, "
        f"{args.dtype}, H={HEADS}, d={HEAD_DIM}"
    )
    print(f"device-to-device copy bandwidth: {peak / 1e12:.2f} TB/s (read + write)\n")
    print("The mediator block between its projections (ms, median); op = what the CUDA op runs for the shape.\n")
    print(BLOCK_HEADER)
    gpu_timer = lambda fn: do_bench(fn, warmup=args.warmup, rep=args.rep)  # noqa: E731
    for N in args.seq:
        for n in args.mediators:
            for B in args.block_batch:
                try:
                    print(block_row(B, N, n, HEADS, HEAD_DIM, dtype, "cuda", gpu_timer, peak), flush=True)
                except torch.cuda.OutOfMemoryError:
                    print(f"| {N} | {n} | {B} | out of memory |", flush=True)
                torch.cuda.empty_cache()
    if not args.op:
        return 0
    print("\nThe mediator_attention op alone\n")
    print(
        "| N | n | B | reference ms | sdpa x2 ms | triton ms | full attn ms | triton TB/s | % of copy "
        "| ref / triton | sdpa x2 / triton | full / triton | split-N ms | triton / split-N | triton err | split-N err "
        "| reference err |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")

    wrong = 0
    table = []
    for N in args.seq:
        for n in args.mediators:
            for B in args.batch:
                result = bench_one(B, N, n, dtype, args, do_bench, peak)
                wrong += result is None
                if result is not None:
                    ms, row = result
                    print(row, flush=True)
                    table.append(
                        {
                            "tokens": N,
                            "mediators": n,
                            "batch_heads": B * HEADS,
                            "head_dim": HEAD_DIM,
                            "ms": {f: round(ms[f], 5) for f in ("reference", "sdpa", "triton", "split")},
                        }
                    )
                    if args.write_table is not None:  # after every row: a time limit keeps what was measured
                        write_table(args.write_table, props.name, args.dtype, table)
                torch.cuda.empty_cache()
    if args.sweep:
        print("\nLaunch sweep: the kernel's time at its default (block_n, splits) and at the fastest correct one.\n")
        print("| N | n | B | default ms (block_n, splits) | best ms (block_n, splits) | default / best |")
        print("|---|---|---|---|---|---|")
        for N in args.seq:
            for n in args.mediators:
                for B in args.batch:
                    print(sweep_one(B, N, n, dtype, args, do_bench), flush=True)
                    torch.cuda.empty_cache()
    return 2 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
