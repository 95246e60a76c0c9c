"""What importing costs: sampling from a bundle loads neither the exporter nor Polygraphy nor matplotlib, and the
command line's help loads no torch (checked by the modules each loads, in a fresh interpreter)."""

import json
import subprocess
import sys


def loaded_after(code: str) -> set[str]:
    probe = code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


def test_pipeline_imports_no_exporter():
    mods = loaded_after("import medexport\nmedexport.Pipeline\nfrom medexport.bundle import open_bundle, engine_runner")
    assert "torch" in mods and "medexport.runtime.pipeline" in mods
    for heavy in ("onnxscript", "onnx_ir", "onnx", "polygraphy", "matplotlib", "medexport.export"):
        assert heavy not in mods, heavy


def test_cli_help_imports_no_torch():
    mods = loaded_after(
        "from click.testing import CliRunner\nfrom medexport.cli import cli\n"
        "r = CliRunner().invoke(cli, ['--help'])\nassert r.exit_code == 0, r.output\n"
        "assert all(c in r.output for c in ('build', 'verify', 'inspect', 'sample', 'eval', 'flops', 'info'))"
    )
    assert "torch" not in mods and "onnxscript" not in mods


def test_import_medexport_is_light_and_lazy():
    mods = loaded_after("import medexport\nassert medexport.__version__\nassert 'Pipeline' in dir(medexport)")
    assert "torch" not in mods
    import medexport

    assert medexport.Pipeline.__name__ == "Pipeline"


def test_build_help_and_the_torch_free_runtime_load_no_torch():
    mods = loaded_after(
        "from click.testing import CliRunner\nfrom medexport.cli import cli\n"
        "r = CliRunner().invoke(cli, ['build', '--help'])\nassert r.exit_code == 0, r.output\n"
        "assert '--plugin' in r.output and '--trt-optimization-level' in r.output"
    )
    assert "torch" not in mods and "medexport.bundle.manifest" not in mods
    mods = loaded_after(
        "import medexport.lite, medexport.core.sampling, medexport.core.manifest\n"
        "from medexport.backend import registry\nregistry.discover()"
    )
    assert not {"torch", "onnx", "onnxscript", "polygraphy", "matplotlib"} & mods
