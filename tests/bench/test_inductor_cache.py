"""The inductor backend keeps what it compiles across process starts: a second process finds it in the cache
(medexport's cache folder by default, a user's TORCHINDUCTOR_CACHE_DIR when set) and starts faster."""

import json
import os
import subprocess
import sys
from pathlib import Path

from medexport.backend.inductor import cache

ROOT = Path(__file__).resolve().parents[2]

#: One compile of a one-block model and its first call, in a fresh process: the start a server pays.
START = """
import json, time
import torch
torch.set_num_threads(1)
import medexport
from medexport.backend.inductor.cache import cache_stats
from medexport.backend.inductor.runner import CompiledRunner
from medexport.model import ModelConfig

cfg = ModelConfig(depth=1, hidden_size=32, num_heads=2, patch_size=2, input_size=8, mediators=4, num_classes=10)
model = medexport.create_model(cfg, seed=0, init="random")
x, t, y = torch.randn(2, 4, 8, 8), torch.rand(2), torch.tensor([1, 2])
t0 = time.perf_counter()
runner = CompiledRunner(model, device="cpu")
out = runner(x, t, y)
seconds = time.perf_counter() - t0
assert out.isfinite().all()
print(json.dumps({**cache_stats(), "seconds": seconds}))
"""


def start(env: dict) -> dict:
    r = subprocess.run([sys.executable, "-c", START], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_a_second_process_start_loads_what_the_first_compiled(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != cache.ENV}
    env["MEDEXPORT_CACHE_DIR"] = str(tmp_path / "medexport")
    cold = start(env)
    warm = start(env)
    assert cold["dir"] == warm["dir"] == str(tmp_path / "medexport" / "inductor")
    assert cold["misses"] >= 1 and cold["hits"] == 0, cold
    assert warm["hits"] == cold["misses"] and warm["misses"] == 0, warm
    assert warm["seconds"] < cold["seconds"], (cold, warm)
    assert any((tmp_path / "medexport" / "inductor").iterdir())


def test_a_users_own_cache_folder_wins(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.ENV, str(tmp_path / "mine"))
    monkeypatch.setenv("MEDEXPORT_CACHE_DIR", str(tmp_path / "medexport"))
    assert cache.use_persistent_cache() == tmp_path / "mine"
    assert os.environ[cache.ENV] == str(tmp_path / "mine")
    monkeypatch.delenv(cache.ENV)
    assert cache.use_persistent_cache() == tmp_path / "medexport" / "inductor" == cache.default_cache_dir()
    # torch writes its own temporary default into the variable when dynamo is imported: no choice of the user's
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir as torch_default

    monkeypatch.setenv(cache.ENV, torch_default())
    assert cache.use_persistent_cache() == tmp_path / "medexport" / "inductor"
    monkeypatch.delenv("MEDEXPORT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.default_cache_dir() == tmp_path / "xdg" / "medexport" / "inductor"
