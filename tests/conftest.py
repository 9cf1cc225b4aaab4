"""Shared fixtures: real text slices, tiny configs.

Real corpora come from ../shared/data beside the repository (override with TINYLM_SHARED_DATA).
On a clone without it, the text fixtures fall back to the Python standard library's source, so the
suite still runs; tests that need a specific shared file skip with a reason.
"""
from __future__ import annotations

import ast
import os
import shutil
import sysconfig
import tempfile
from pathlib import Path

import pytest
import torch

from tinylm.config import Config, DataConfig, set_value
from tinylm.data.loader import TokenWindows
from tinylm.data.prepare import prepare

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TINYLM_SHARED_DATA", REPO.parent / "shared" / "data"))
TINYSHAKESPEARE = SHARED_DATA / "tinyshakespeare" / "input.txt"
if (REPO.parent / "shared" / "tiktoken_cache").is_dir():  # tiktoken's GPT-2 files, offline
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(REPO.parent / "shared" / "tiktoken_cache"))

# Nothing a test runs may write to the user's home: caches (the CPU peak probe's cpu_peak.json,
# named corpora, W&B's settings) go to one throw-away folder for the session, child processes too.
SESSION_HOME = Path(tempfile.mkdtemp(prefix="tinylm-test-home-"))
os.environ.update(HOME=str(SESSION_HOME), XDG_CACHE_HOME=str(SESSION_HOME / ".cache"),
                  TINYLM_DATA_DIR=str(SESSION_HOME / "data"))


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(SESSION_HOME, ignore_errors=True)


COLLECTED: list = []  # every test of this session, before -m and -k deselect any (README's count: test_readme)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    COLLECTED[:] = items


def shared_text(rel: str, n_chars: int | None = None) -> str:
    """A file of the shared data folder (its first n_chars), or skip the test with the reason."""
    path = SHARED_DATA / rel
    if not path.is_file():
        pytest.skip(f"{path} not found (set TINYLM_SHARED_DATA to the shared data folder)")
    text = path.read_text(encoding="utf-8")
    return text if n_chars is None else text[:n_chars]


def stdlib_text(n_chars: int = 1_000_000) -> str:
    """About n_chars of the Python standard library's source (every machine has it)."""
    parts, total = [], 0
    for p in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        t = p.read_text(encoding="utf-8", errors="replace")
        parts.append(t)
        total += len(t)
        if total >= n_chars:
            break
    return "".join(parts)[:n_chars]


@pytest.fixture(scope="session")
def text_200k(tmp_path_factory) -> Path:
    """A ~200 KB real text file: tiny Shakespeare's head, or stdlib source without ../shared."""
    text = TINYSHAKESPEARE.read_text(encoding="utf-8")[:200_000] if TINYSHAKESPEARE.is_file() else stdlib_text(200_000)
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def small_windows(tmp_path_factory, text_200k):
    """The training windows (16 characters) of a 3.4 KB text: a loader of 4 goes round an epoch in ~48 batches."""
    tmp = tmp_path_factory.mktemp("small")
    corpus = tmp / "corpus.txt"
    corpus.write_text(text_200k.read_text(encoding="utf-8")[:3_400], encoding="utf-8")
    cfg = DataConfig(corpus=str(corpus), dir=str(tmp / "prep"), tokenizer="char")
    prepare(cfg, progress=False, log=lambda *a: None)
    return TokenWindows(cfg.dir, "train", 16)


def make_unreadable(how: str, monkeypatch, *paths: Path) -> None:
    """Make files or folders unreadable: ``chmod`` (mode 000; skipped as root, who reads them anyway: pytest
    restores the modes when it removes tmp_path) or ``patch`` (opening or listing them raises PermissionError, as
    mode 000 does for an ordinary user; pathlib opens through io.open, folders are listed with os.scandir)."""
    if how == "chmod":
        if os.geteuid() == 0:
            pytest.skip("root reads files and folders of mode 000: the patched case tests this")
        for p in paths:
            p.chmod(0)
        return
    import builtins
    import errno
    import io
    denied = {os.path.realpath(p) for p in paths}
    real_open, real_scandir = builtins.open, os.scandir

    def check(path) -> None:
        if isinstance(path, (str, os.PathLike)) and os.path.realpath(path) in denied:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))

    def fake_open(file, *args, **kwargs):
        check(file)
        return real_open(file, *args, **kwargs)

    def fake_scandir(path="."):
        check(path)
        return real_scandir(path)
    for module in (builtins, io):
        monkeypatch.setattr(module, "open", fake_open)
    monkeypatch.setattr(os, "scandir", fake_scandir)


def same_position(a: dict, b: dict) -> bool:
    """Two batch-loader states are the same position (the generator's state is a tensor)."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k]
                                        for k in a)


def tiny_config(tmp_path: Path, corpus: Path, **overrides) -> Config:
    """2 layers, width 32, context 32: trains a few dozen steps in seconds.

    Precision is pinned to fp32: `auto` means bf16 on a CPU with native bf16 and fp32 elsewhere,
    and a test that compares numbers must not change with the machine. bf16 is tested by asking.
    The device is pinned to the CPU: on a machine with a GPU `auto` means CUDA, and the suite must give
    the same results there; a test about device choice asks for `auto` and says so in its name.
    """
    cfg = Config()
    base = {"data.corpus": str(corpus), "data.dir": str(tmp_path / "data"), "run.dir": str(tmp_path / "runs"),
            "run.name": "tiny", "run.progress": False, "model.n_layer": 2, "model.n_head": 2,
            "model.n_embd": 32, "model.block_size": 32, "train.batch_size": 8, "train.max_steps": 30,
            "train.eval_interval": 10, "train.eval_tokens": 512, "train.log_interval": 5,
            "optim.lr": 1e-2, "optim.warmup_steps": 5, "sample.max_new_tokens": 20, "train.precision": "fp32",
            "train.device": "cpu",
            "run.report": False}  # the end-of-run report (matplotlib) costs seconds: tests that check it ask for it
    base.update(overrides)
    for k, v in base.items():
        set_value(cfg, k, v)
    return cfg


def one_line_error(capsys, *needles: str) -> str:
    """The command's stderr: one line, "tinylm: error: ...", no traceback, holding each of ``needles``."""
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("tinylm: error: "), err
    for needle in needles:
        assert needle in err, err
    return err


def cli_args(cfg: Config) -> list[str]:
    """A config as dotted overrides, for tests that start `tinylm train` as a child process."""
    return [item for section in ("model", "data", "optim", "train", "run")
            for k, v in vars(getattr(cfg, section)).items() for item in (f"--{section}.{k}", str(v))]


# How close two runs that should compute the same thing (accumulation vs one batch, DDP or FSDP vs
# one process) must stay. fp32: rounding only, over every step. bf16: each product is rounded to
# 8 bits, and at the tests' high LR (1e-2) the two runs' rounding differences grow step by step
# (measured over 4 seeds on this suite's tiny model: <= 1.3e-4 up to step 5, up to 3e-2 by step
# 10), so bf16 compares the first 5 steps, where a real bug (a wrong average, a missed sync)
# already shows as a difference of 1e-2 or more.
EQUIVALENCE_BOUND = {"fp32": 1e-4, "bf16": 2e-3}
EQUIVALENCE_STEPS = {"fp32": None, "bf16": 5}


def max_loss_difference(a: dict[int, float], b: dict[int, float], precision: str) -> float:
    """The largest |loss difference| of two runs over the steps compared at ``precision``."""
    last = EQUIVALENCE_STEPS[precision] or max(a)
    return max(abs(a[s] - b[s]) for s in a if s <= last)


def imported_modules(module: str) -> set[str]:
    """Every module ``module`` imports at load time, transitively through tinylm's own modules, read
    from the source (imports inside functions are on demand and not counted); a package's __init__
    counts as it runs on the way, the facade's included: ``imported_modules("tinylm.config")`` ->
    {"tinylm", "tinylm.errors", "tomllib", ...}
    """
    src = REPO / "src"

    def source(name: str) -> Path | None:
        path = src.joinpath(*name.split("."))
        for candidate in (path.with_suffix(".py"), path / "__init__.py"):
            if candidate.is_file():
                return candidate
        return None

    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        path = source(name)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        nested = {id(n) for top in ast.walk(tree) if isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef))
                  for n in ast.walk(top)}
        for node in ast.walk(tree):
            if id(node) in nested or not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative: from the module's package, up node.level - 1 levels
                    parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            # importing a.b.c runs a.b's __init__ too
            targets += [".".join(t.split(".")[:k]) for t in targets if t.startswith("tinylm.")
                        for k in range(1, t.count(".") + 1)]
            for t in targets:
                ours = t.split(".")[0] == "tinylm"
                if (ours and source(t) is None) or t in seen:
                    continue  # a name from a module rather than a module; done already
                seen.add(t)
                if ours:
                    todo.append(t)
    return seen
