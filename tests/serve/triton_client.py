"""Run inside the Triton test's own virtual environment (tritonclient, numpy<2): talks to a running server,
prints one JSON object of results. Usage: triton_client.py PORT WORK_DIR"""

import json
import sys
import time
from pathlib import Path

import numpy as np
import tritonclient.http as http

port, work = sys.argv[1], Path(sys.argv[2])
client = http.InferenceServerClient(f"127.0.0.1:{port}", concurrency=8)
out = {}


def inputs(labels, noise=None, schedule=None, seed=None, image_seeds=None):
    """The request: labels (and noise, schedule, seeds), ODE Euler with 6 steps (deterministic, so comparable)."""
    ins = [http.InferInput("labels", [len(labels)], "INT64")]
    ins[0].set_data_from_numpy(np.asarray(labels, np.int64))
    if seed is not None:
        ins.append(http.InferInput("seed", [1], "INT64"))
        ins[-1].set_data_from_numpy(np.array([seed], np.int64))
    if image_seeds is not None:
        ins.append(http.InferInput("image_seeds", [len(image_seeds)], "INT64"))
        ins[-1].set_data_from_numpy(np.asarray(image_seeds, np.int64))
    for name, value in (("sampler", "ode"), ("method", "euler")):
        ins.append(http.InferInput(name, [1], "BYTES"))
        ins[-1].set_data_from_numpy(np.array([value.encode()], dtype=object))
    ins.append(http.InferInput("steps", [1], "INT32"))
    ins[-1].set_data_from_numpy(np.array([6], np.int32))
    if noise is not None:
        ins.append(http.InferInput("noise", list(noise.shape), "FP32"))
        ins[-1].set_data_from_numpy(noise)
    if schedule is not None:
        ins.append(http.InferInput("schedule", [1], "BYTES"))
        ins[-1].set_data_from_numpy(np.array([schedule.encode()], dtype=object))
    return ins


noise = np.load(work / "noise.npy")
t0 = time.perf_counter()
got = client.infer("medexport_sampler", inputs([0, 1, 2], noise)).as_numpy("samples")
out["one_request_seconds"] = time.perf_counter() - t0
want = np.load(work / "want.npy")
out["rel_diff"] = float(np.linalg.norm(got - want) / np.linalg.norm(want))
# The same request as Pipeline.run and LitePipeline.run got: the seed alone, then one image by its own seed.
seeded = client.infer("medexport_sampler", inputs([0, 1, 2], seed=5)).as_numpy("samples")
out["seeded_equal"] = bool(np.array_equal(seeded, np.load(work / "seeded.npy")))
one = client.infer("medexport_sampler", inputs([2], image_seeds=[int(np.load(work / "seeds.npy")[2])])).as_numpy(
    "samples"
)
out["image_seed_equal"] = bool(np.array_equal(one, seeded[2:]))
for name, args in (("bad_label", ([0, 99],)), ("bad_schedule", ([0], None, "16:0.5,128"))):
    try:
        client.infer("medexport_sampler", inputs(*args))
        out[name] = None
    except Exception as e:  # the server answers an error and keeps serving
        out[name] = str(e)


def stats(model):
    s = client.get_inference_statistics(model)["model_stats"][0]
    return s["inference_stats"]["success"]["count"], s["execution_count"]


before = {m: stats(m) for m in ("medexport_m16", "medexport_m64")}
handles = [client.async_infer("medexport_sampler", inputs([i, i + 1])) for i in range(4)]
results = [h.get_result().as_numpy("samples") for h in handles]
out["concurrent_shapes"] = [list(r.shape) for r in results]
after = {m: stats(m) for m in before}
out["step_calls"] = {m: after[m][0] - before[m][0] for m in before}
out["executions"] = {m: after[m][1] - before[m][1] for m in before}
print(json.dumps(out))
