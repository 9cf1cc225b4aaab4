"""Every benchmark script imports cleanly (a renamed library function breaks it here, not months later
when someone runs it) and runs nothing on import."""
import importlib.util
import os
import sys
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


@pytest.fixture
def restore_environ():
    saved = dict(os.environ)  # scripts set defaults such as TINYLM_DATA_DIR when imported
    yield
    os.environ.clear()
    os.environ.update(saved)


def test_there_are_benchmark_scripts():
    assert len(SCRIPTS) >= 5


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_benchmark_script_imports_without_running(path, restore_environ, monkeypatch):
    assert 'if __name__ == "__main__":' in path.read_text(encoding="utf-8"), f"{path.name} must guard its main()"
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)  # raises ImportError on a name the library no longer has
    assert callable(getattr(module, "main", None))
