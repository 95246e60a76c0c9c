#!/usr/bin/env python3
"""Images per second of SiT-XL/2 sampling on a CUDA GPU: the mediator schedule on the PyTorch CUDA-graph
backend against the reference-style eager float32 model and against vanilla SiT-XL/2 (full attention).

    python benchmarks/bench_gpu_pipeline.py [--sizes 256,512] [--batch 8] [--steps 50] [--runs 3]

All three sample the same labels from the same noise: ODE Euler with ``--steps`` model evaluations, guidance
scale 4 (so the networks see 2 x batch), random weights (speed does not depend on them).

    schedule (bf16, CUDA graphs)   16 -> 32 -> 64 mediators ("16:0.3,32:0.7,64"), one model per count
    eager fp32                     the same three models and schedule, float32, no graphs (reference style)
    vanilla SDPA bf16              SiT-XL/2 with full self-attention via scaled_dot_product_attention, bf16
                                   (CUDA graphs too, so the comparison isolates the attention)
    --compile-sizes                both again through torch.compile (inductor, CUDA graphs: the inductor
                                   backend's CompiledRunner), after the rest, as compiling XL takes a while
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import medexport  # noqa: E402
from medexport import Pipeline  # noqa: E402
from medexport.backend import TorchRunner  # noqa: E402
from medexport.backend.inductor.runner import CompiledRunner  # noqa: E402

SCHEDULE = "16:0.3,32:0.7,64"


def vanilla_sit(image_size: int) -> medexport.MediatorDiT:
    """The vanilla twin: SiT-XL/2 with full self-attention (``attention="full"``, SDPA), as `build --attention full`
    builds it."""
    return medexport.create_model("SiT-XL/2", mediators=0, image_size=image_size, init="random", seed=0)


def images_per_second(pipe: Pipeline, labels, noise, schedule, steps: int, runs: int) -> float:
    kwargs = dict(noise=noise, sampler="ode", method="euler", steps=steps + 1, cfg_scale=4.0, schedule=schedule)
    pipe.sample(labels, **kwargs)  # warm-up (captures the CUDA graphs)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(runs):
        pipe.sample(labels, **kwargs)
    torch.cuda.synchronize()
    return runs * len(labels) / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="256,512")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=50, help="ODE Euler model evaluations")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--profile", action="store_true",
                   help="also print where one bf16 forward's GPU time goes, mediator model against vanilla")
    p.add_argument("--no-eager", action="store_true", help="skip the (slow) eager fp32 reference column")
    p.add_argument("--compile-sizes", default="", help="image sizes to time through torch.compile too, e.g. 256,1024")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_gpu_pipeline.py needs a CUDA GPU; none is visible here.")
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 reference stays fp32
    print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}; batch {args.batch} (x2 with guidance), "
          f"{args.steps} ODE Euler steps")
    print(f"{'image':>6} {'schedule bf16+graphs':>22} {'vanilla SDPA bf16':>18} {'vs vanilla':>11}   (images/s)")
    ips_fast = {}
    sizes = [int(v) for v in args.sizes.split(",") if v]
    for size in sizes:
        models, labels, noise = setup(size, args.batch)
        c = models[64].config
        fast = Pipeline.from_models(models, device="cuda", precision="bf16", cuda_graph=True)
        ips_fast[size] = images_per_second(fast, labels, noise, SCHEDULE, args.steps, args.runs)
        del fast
        vanilla = Pipeline({0: TorchRunner(vanilla_sit(size), device="cuda", precision="bf16", cuda_graph=True)},
                           c.with_mediators(0))
        ips_vanilla = images_per_second(vanilla, labels, noise, "0", args.steps, args.runs)
        del vanilla
        print(f"{size:>6} {ips_fast[size]:>22.2f} {ips_vanilla:>18.2f} {ips_fast[size] / ips_vanilla:>10.2f}x",
              flush=True)
        if args.profile:
            print(f"\nGPU time of one bf16 forward at {size} px, batch {2 * args.batch} (torch.profiler):")
            print(profile_forward(models[64], vanilla_sit(size), 2 * args.batch), flush=True)
        torch.cuda.empty_cache()
    # torch.compile of every count and of the vanilla model, each against the other compiled the same way
    for size in [int(v) for v in args.compile_sizes.split(",") if v]:
        models, labels, noise = setup(size, args.batch)
        c = models[64].config
        t0 = time.perf_counter()
        fast = Pipeline({n: CompiledRunner(m, device="cuda", precision="bf16") for n, m in models.items()}, c)
        ips_c = images_per_second(fast, labels, noise, SCHEDULE, args.steps, args.runs)
        del fast
        vanilla = Pipeline({0: CompiledRunner(vanilla_sit(size), device="cuda", precision="bf16")}, c.with_mediators(0))
        ips_vc = images_per_second(vanilla, labels, noise, "0", args.steps, args.runs)
        del vanilla
        torch.cuda.empty_cache()
        print(f"{size:>6} compiled (inductor + CUDA graphs): schedule {ips_c:.2f}, vanilla {ips_vc:.2f} images/s, "
              f"{ips_c / ips_vc:.2f}x; best of graphs/compiled: {max(ips_c, ips_fast.get(size, 0)):.2f} "
              f"[{time.perf_counter() - t0:.0f} s with compiling]", flush=True)
    # The fp32 reference is by far the slowest: measured after everything else, so a time limit costs only it.
    for size in ([] if args.no_eager else sizes):
        models, labels, noise = setup(size, args.batch)
        eager = Pipeline.from_models(models, device="cuda", precision="fp32", cuda_graph=False)
        ips_eager = images_per_second(eager, labels, noise, SCHEDULE, args.steps, args.runs)
        del eager
        torch.cuda.empty_cache()
        print(f"{size:>6} eager fp32 (reference style): {ips_eager:.2f} images/s; the schedule on bf16 + graphs is "
              f"{ips_fast[size] / ips_eager:.2f}x that", flush=True)


def setup(size: int, batch: int):
    """The three SiT-XL/2 models (random weights, seeded), labels and noise for one image size."""
    models = {n: medexport.create_model("SiT-XL/2", mediators=n, image_size=size, init="random", seed=n)
              for n in (16, 32, 64)}
    c = models[64].config
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(batch, c.in_channels, c.input_size, c.input_size, generator=g)
    labels = torch.randint(0, c.num_classes, (batch,), generator=g).tolist()
    return models, labels, noise


def profile_forward(mediator_model, vanilla_model, batch: int, rows: int = 12) -> str:
    """The top CUDA kernels of one eager bf16 forward of each model, side by side as two tables."""
    from torch.profiler import ProfilerActivity, profile

    out = []
    for name, model in (("mediators (64)", mediator_model), ("vanilla", vanilla_model)):
        runner = TorchRunner(model, device="cuda", precision="bf16")
        c = model.config
        x = torch.randn(batch, c.in_channels, c.input_size, c.input_size, device="cuda")
        t = torch.rand(batch, device="cuda")
        y = torch.randint(0, c.num_classes, (batch,), device="cuda")
        for _ in range(3):
            runner.infer(x, t, y)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            runner.infer(x, t, y)
            torch.cuda.synchronize()
        out.append(f"-- {name}\n" + prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows))
        del runner
    return "\n".join(out)


if __name__ == "__main__":
    main()
