import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from medexport.cli import cli


@pytest.fixture(scope="session")
def demo_bundle(tmp_path_factory):
    """The demo bundle exactly as a newcomer builds it: `medexport build` with no arguments, in a fresh folder.

    Shared by many tests: do not modify it.
    """
    cwd = tmp_path_factory.mktemp("newcomer")
    old = os.getcwd()
    os.chdir(cwd)
    try:
        r = CliRunner().invoke(cli, ["build"], catch_exceptions=False)
    finally:
        os.chdir(old)
    assert r.exit_code == 0, r.output
    path = Path(cwd) / "engines" / "fashion-mnist-demo"
    assert (path / "manifest.json").is_file()
    return path
