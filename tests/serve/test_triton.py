"""``medexport export-triton``: the model repository, served for real by the ``tritonserver`` that PyTriton
bundles (python backend), on 127.0.0.1, in its own virtual environment (PyTriton pins numpy < 2).

The environment is created on first use under ``$MEDEXPORT_TRITON_VENV`` (default: the pytest cache); the tests
skip with the reason when it cannot be installed (no package index).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from medexport import Pipeline, SampleRequest
from medexport.lite import LitePipeline
from medexport.serve.triton import MARKER, TritonExportError, count_config, export_triton

HERE = Path(__file__).resolve().parent
PY = f"{sys.version_info[0]}.{sys.version_info[1]}"


@pytest.fixture(scope="session")
def triton_venv(request):
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        pytest.skip("Triton's python backend stub needs libpython: this Python was built without --enable-shared")
    root = Path(os.environ.get("MEDEXPORT_TRITON_VENV") or request.config.cache.mkdir("triton-venv"))
    python = root / "bin" / "python"
    site = root / "lib" / f"python{PY}" / "site-packages"
    if not (site / "pytriton" / "tritonserver" / "bin" / "tritonserver").is_file():
        try:
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(root)], check=True, capture_output=True)
            subprocess.run(
                [str(python), "-m", "pip", "install", "-q", "nvidia-pytriton", "numpy<2", "onnxruntime"],
                check=True,
                capture_output=True,
                timeout=900,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            pytest.skip(
                f"PyTriton could not be installed into its own environment ({e}): the Triton tests need "
                f"the package index"
            )
    return python, site


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def repo(tiny_bundle, tmp_path_factory):
    return export_triton(
        tiny_bundle, tmp_path_factory.mktemp("triton") / "repo", sampler_instances=4, queue_delay_us=2000
    )


def _server(venv, repo: Path, work: Path):
    python, site = venv
    server = work / "tritonserver"  # PyTriton's layout: the stub of this Python goes into the python backend
    shutil.copytree(site / "pytriton" / "tritonserver", server, ignore=shutil.ignore_patterns("python_backend_stubs"))
    shutil.copy(
        site / "pytriton" / "tritonserver" / "python_backend_stubs" / PY / "triton_python_backend_stub",
        server / "backends" / "python" / "triton_python_backend_stub",
    )
    env = {
        **os.environ,
        "LD_LIBRARY_PATH": f"{site / 'nvidia_pytriton.libs'}:{sysconfig.get_config_var('LIBDIR')}",
        "PATH": f"{python.parent}:{os.environ['PATH']}",
    }
    ports = [_port() for _ in range(3)]
    proc = subprocess.Popen(
        [
            str(server / "bin" / "tritonserver"),
            "--model-repository",
            str(repo),
            "--backend-directory",
            str(server / "backends"),
            "--http-address",
            "127.0.0.1",
            "--grpc-address",
            "127.0.0.1",
            "--http-port",
            str(ports[0]),
            "--grpc-port",
            str(ports[1]),
            "--metrics-port",
            str(ports[2]),
        ],
        env=env,
        stdout=open(work / "server.log", "w"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/v2/health/ready", timeout=2).status == 200:
                return proc, ports[0]
        except OSError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    proc.kill()
    pytest.fail("tritonserver did not become ready:\n" + (work / "server.log").read_text()[-3000:])


def _serve_and_ask(venv, repo: Path, work: Path) -> dict:
    """Serve ``repo`` and run triton_client.py against it (its inputs and expected arrays are in ``work``)."""
    proc, port = _server(venv, repo, work)
    try:
        out = subprocess.run(
            [str(venv[0]), str(HERE / "triton_client.py"), str(port), str(work)],
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert out.returncode == 0, out.stderr[-3000:] + (work / "server.log").read_text()[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_repository_is_served_for_real(triton_venv, repo, tiny_bundle, tmp_path):
    noise = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    pipe = Pipeline.from_bundle(tiny_bundle, backend="onnxruntime")
    pipe.sample([0], sampler="ode", method="euler", steps=3)  # sessions loaded, as the server's are
    t0 = time.perf_counter()
    want = pipe.sample([0, 1, 2], noise=noise, sampler="ode", method="euler", steps=6).latents
    in_process = time.perf_counter() - t0
    np.save(tmp_path / "noise.npy", noise.numpy())
    np.save(tmp_path / "want.npy", want.numpy())
    request = SampleRequest([0, 1, 2], seed=5, sampler="ode", method="euler", steps=6)
    seeded = Pipeline.from_bundle(tiny_bundle, backend="onnxruntime", threads=1).run(request).latents.numpy()
    lite = LitePipeline.from_bundle(tiny_bundle, threads=1).run(request).latents
    np.testing.assert_array_equal(lite, seeded)  # one sampling core: the same request, the same images
    np.save(tmp_path / "seeded.npy", seeded)
    np.save(tmp_path / "seeds.npy", np.asarray(request.row_seeds(), np.int64))
    r = _serve_and_ask(triton_venv, repo, tmp_path)
    assert r["rel_diff"] < 1e-5  # the latents Pipeline makes in-process from the same noise
    assert r["seeded_equal"] and r["image_seed_equal"]  # and from the same seeds: bit for bit, as LitePipeline
    assert "outside 0..9" in r["bad_label"] and "128" in r["bad_schedule"]
    assert r["concurrent_shapes"] == [[2, 4, 16, 16]] * 4  # still serving after the bad requests
    print(
        "triton:", json.dumps(r | {"pipeline_in_process_seconds": in_process})
    )  # the numbers the closing note quotes (pytest -s)


def test_config_files_parse_with_tritons_model_config(triton_venv, repo, tmp_path):
    files = sorted(repo.glob("*/config.pbtxt"))
    for variant in ("onnx", "tensorrt"):  # the variants this machine cannot serve: their configs, parsed
        path = tmp_path / f"{variant}.pbtxt"
        path.write_text(count_config(16, variant, (4, 16, 16), 8, 2, 500, 1))
        files.append(path)
    script = (
        "import sys; from google.protobuf import text_format; "
        "from tritonclient.grpc import model_config_pb2 as m\n"
        "for f in sys.argv[1:]:\n"
        "    c = text_format.Parse(open(f).read(), m.ModelConfig())\n"
        "    print(c.name, c.platform or c.backend, c.max_batch_size, len(c.input), c.HasField('dynamic_batching'))"
    )
    out = subprocess.run([str(triton_venv[0]), "-c", script, *map(str, files)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    assert any("onnxruntime_onnx" in x for x in lines) and any("tensorrt_plan" in x for x in lines)
    assert any(x.startswith("medexport_sampler python 0 10 False") for x in lines)
    assert sum("True" in x for x in lines) == len(files) - 1  # every per-count model batches dynamically


def test_the_export_never_takes_a_users_folder(tiny_bundle, repo, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(TritonExportError, match="not a medexport Triton repository"):
        export_triton(tiny_bundle, mine, force=True)
    assert (mine / "notes.txt").read_text() == "keep" and not (tmp_path / "mine.partial").exists()
    again = shutil.copytree(repo, tmp_path / "again")
    with pytest.raises(TritonExportError, match="--force"):
        export_triton(tiny_bundle, again)
    export_triton(tiny_bundle, again, force=True)
    assert json.loads((again / MARKER).read_text())["variant"] == "python"
    (again / "my_classifier").mkdir()  # a model the user added to the exported repository
    (again / "my_classifier" / "config.pbtxt").write_text("mine")
    with pytest.raises(TritonExportError, match="did not write there \\(my_classifier\\)"):
        export_triton(tiny_bundle, again, force=True)
    assert (again / "my_classifier" / "config.pbtxt").read_text() == "mine"
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    (tmp_path / "new.partial").symlink_to(victim)  # a link planted under the temporary name
    with pytest.raises(TritonExportError, match="symbolic link"):
        export_triton(tiny_bundle, tmp_path / "new")
    assert victim.read_text() == "keep" and not (tmp_path / "new").exists()
    with pytest.raises(Exception, match="tensorrt engines"):
        export_triton(tiny_bundle, tmp_path / "trt", variant="tensorrt")


def test_a_backend_registered_from_a_test_module_is_served(triton_venv, tiny_checkpoints, tmp_path):
    """The test backend of tests/backend (one object, its own module, its own Triton variant) is served with no
    edit to medexport: same images as Pipeline over its engines."""
    from medexport.backend import registry
    from tests.backend.test_registry import CopyBackend, build_copy_bundle

    backend = registry.register(CopyBackend())
    try:
        bundle = build_copy_bundle(tiny_checkpoints, tmp_path / "copy-bundle")
        repo = export_triton(bundle, tmp_path / "copy-repo", variant="copy-python")
        request = SampleRequest([0, 1, 2], seed=5, sampler="ode", method="euler", steps=6)
        want = Pipeline.from_bundle(bundle, backend="copy").run(request).latents.numpy()
    finally:
        registry.unregister(backend.name)
    assert (repo / "medexport_m16" / "1" / "model.onnx").is_file()
    np.save(tmp_path / "noise.npy", np.zeros((3, 4, 16, 16), np.float32))
    np.save(tmp_path / "want.npy", np.ones((3, 4, 16, 16), np.float32))
    np.save(tmp_path / "seeded.npy", want)
    np.save(tmp_path / "seeds.npy", np.asarray(request.row_seeds(), np.int64))
    r = _serve_and_ask(triton_venv, repo, tmp_path)
    assert r["seeded_equal"] and r["image_seed_equal"]
