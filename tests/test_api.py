"""The README's Python example runs as written; the public names are what they say."""
import re
import shutil
import subprocess
import sys

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
