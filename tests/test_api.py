"""The README's Python example runs as written; the public names are what they say; the modules import one way."""
import ast
import graphlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO


def readme_example() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_example_trains_and_samples(tmp_path, text_200k, monkeypatch, capsys):
    shutil.copy(text_200k, tmp_path / "input.txt")
    monkeypatch.chdir(tmp_path)
    code = readme_example()
    assert len(code.strip().splitlines()) <= 13
    names: dict = {}
    exec(compile(code, "README.md", "exec"), names)
    text = names["text"]
    assert 0 < len(text) <= 40  # up to 40 new tokens of a character-level model: up to 40 characters
    assert set(text) <= set(names["tok"].decode(list(range(names["tok"].vocab_size))))
    assert ("ROMEO:" + text) in capsys.readouterr().out
    assert (tmp_path / "runs" / "mine" / "checkpoints" / "last" / "meta.json").is_file()


def test_public_names_are_the_functions_not_their_modules():
    """tinylm.train and tinylm.generate are functions; importing the modules that define them
    (tinylm.training.trainer, tinylm.generation.generate) does not replace them on the package."""
    code = ("import tinylm, tinylm.training.trainer, tinylm.generation.generate, inspect; "
            "assert inspect.isfunction(tinylm.train) and inspect.isfunction(tinylm.generate); "
            "assert all(hasattr(tinylm, n) for n in tinylm.__all__)")
    subprocess.run([sys.executable, "-c", code], check=True)


def module_imports(src: Path) -> dict[str, set[str]]:
    """Each module of src/tinylm -> the tinylm modules it imports at its top level, ``if TYPE_CHECKING:``
    blocks included (an import inside a function is not an edge: it runs only when the function does)."""
    files = {".".join(p.relative_to(src.parent).with_suffix("").parts).removesuffix(".__init__"): p
             for p in src.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges, body = set(), list(ast.parse(path.read_text(encoding="utf-8")).body)
        while body:
            node = body.pop()
            if isinstance(node, ast.If):
                body += node.body + node.orelse
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                edges |= {f"{target}.{a.name}" if f"{target}.{a.name}" in files else target for a in node.names}
            elif isinstance(node, ast.Import):
                edges |= {a.name for a in node.names}
        graph[name] = {e for e in edges if e in files and e != name}
    return graph


def test_the_model_and_the_tokenizer_import_no_layer_above_them():
    """model/ (the network) and tokenizer/ (text <-> ids) are read on their own: neither imports training, data,
    generation, analysis, diagnostics, interop or cli (the README's Architecture says so)."""
    above = ("training", "data", "generation", "analysis", "diagnostics", "interop", "cli")
    for name, imports in module_imports(REPO / "src" / "tinylm").items():
        if name.startswith(("tinylm.model", "tinylm.tokenizer")):
            assert not {i for i in imports if i.split(".")[1] in above}, name


def test_no_two_modules_import_each_other():
    """The imports of src/tinylm form no circle, not even one for type annotations only."""
    graph = module_imports(REPO / "src" / "tinylm")
    assert graph["tinylm.config"] >= {"tinylm.config_check", "tinylm.generation.strategies"}  # the parser sees edges
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError, naming the circle
    graph["tinylm.config_check"].add("tinylm.config")  # and a circle is caught
    with pytest.raises(graphlib.CycleError):
        graphlib.TopologicalSorter(graph).prepare()
