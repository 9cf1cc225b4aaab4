"""DistributedDataParallel on CPU: 2 gloo processes launched by torchrun, against 1 process."""
import json
import os
import subprocess
import sys

import pytest

from conftest import tiny_config

pytestmark = pytest.mark.slow


def _args(cfg) -> list[str]:
    out = []
    for section in ("model", "data", "optim", "train", "run"):
        for k, v in vars(getattr(cfg, section)).items():
            out += [f"--{section}.{k}", str(v)]
    return out


def _losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_ddp_two_processes_match_one(tmp_path, text_200k):
    opts = {"train.max_steps": 12, "train.log_interval": 1, "train.eval_interval": 6, "train.batch_size": 8,
            "train.threads": 1}
    single = tiny_config(tmp_path, text_200k, **{**opts, "run.name": "single"})
    ddp = tiny_config(tmp_path, text_200k, **{**opts, "run.name": "ddp"})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "tinylm", "train", *_args(single)], check=True, env=env,
                   capture_output=True, timeout=300)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--standalone", "-m", "tinylm", "train", *_args(ddp)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es), micro-batch 4 x 1 accumulation" in proc.stdout
    a, b = _losses(single.run_dir), _losses(ddp.run_dir)
    assert sorted(a) == sorted(b) == list(range(1, 13))
    assert max(abs(a[s] - b[s]) for s in a) < 1e-5
    # only rank 0 wrote: one metrics line per step, one checkpoint folder tree
    assert len([line for line in (ddp.run_dir / "metrics.jsonl").read_text().splitlines()
                if '"loss"' in line]) == 12
