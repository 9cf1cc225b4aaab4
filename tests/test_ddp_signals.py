"""Signals under torchrun (2 gloo processes on the CPU): the processes agree on stopping, save once and exit 130;
a process blocked in a collective still dies; a refused start is one line in every process. And the stop
signal's watchdog on its own, in a plain process."""
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tinylm.training import checkpoint as ckpt
from tinylm.training.tracking import logged_losses

from conftest import cli_args, tiny_config

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
BOUND_S = 60  # from the signal to every process gone (a loaded machine; the stop itself takes a step and a save)

# `tinylm` as each torchrun process runs it, also writing its exit status to EXIT_DIR/rank<N> (a process that ends
# itself at once, with os._exit, writes none)
RECORDING = """import os, sys
from pathlib import Path
from tinylm.cli import main
code = main(sys.argv[1:])
Path(os.environ["EXIT_DIR"], "rank" + os.environ["RANK"]).write_text(str(code))
sys.exit(code)
"""


def _config(tmp_path, corpus, **opts):
    return tiny_config(tmp_path, corpus, **{"train.max_steps": 10**6, "train.eval_interval": 0,
                                            "train.log_interval": 1, "train.batch_size": 8, "train.threads": 1,
                                            "train.device": "cpu", "train.precision": "fp32", **opts})


def _start(tmp_path, cfg, *extra, exits: str = "exits", new_session: bool = False) -> subprocess.Popen:
    """torchrun with 2 processes training ``cfg`` (``new_session``: in a process group of its own, as a terminal
    starts it). Its output goes to a file (``_output`` reads it): a pipe nobody reads while it trains would fill
    and block rank 0's log lines."""
    script = tmp_path / "recording.py"
    script.write_text(RECORDING)
    (tmp_path / exits).mkdir(exist_ok=True)
    log = tmp_path / f"{exits}.log"
    with open(log, "w") as out:
        launcher = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                     "--standalone", str(script), "train", *cli_args(cfg), *extra],
                                    env={**ENV, "EXIT_DIR": str(tmp_path / exits)}, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=new_session)
    launcher.log = log
    return launcher


def _output(launcher: subprocess.Popen, timeout: float) -> str:
    """The launcher's output once it has ended (subprocess.TimeoutExpired if it has not within ``timeout``)."""
    launcher.wait(timeout=timeout)
    return launcher.log.read_text()


def _ranks(launcher: subprocess.Popen) -> dict[int, int]:
    """rank -> pid of the launcher's worker processes."""
    ranks = {}
    children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
    for pid in map(int, children):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        rank = next((int(v[5:]) for v in env if v.startswith(b"RANK=")), None)
        if rank is not None:
            ranks[rank] = pid
    return ranks


def _wait_training(launcher: subprocess.Popen, cfg, steps: int = 3) -> dict[int, int]:
    """Wait until rank 0 has logged ``steps`` steps; the workers' pids by rank."""
    deadline = time.time() + 180
    while not ((cfg.run_dir / "metrics.jsonl").exists() and len(logged_losses(cfg.run_dir)) >= steps):
        assert launcher.poll() is None, launcher.log.read_text()
        assert time.time() < deadline, "training did not start"
        time.sleep(0.2)
    ranks = _ranks(launcher)
    assert sorted(ranks) == [0, 1]
    return ranks


def _finish(launcher: subprocess.Popen, ranks: dict[int, int], t0: float) -> str:
    """The launcher's output, once it and every worker have ended, within BOUND_S of ``t0``."""
    try:
        out = _output(launcher, timeout=BOUND_S + 30)
    except subprocess.TimeoutExpired:
        for pid in (launcher.pid, *ranks.values()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        launcher.wait()
        raise AssertionError("torchrun did not end: the processes hung") from None
    took = time.time() - t0
    assert all(not Path(f"/proc/{pid}").exists() for pid in ranks.values())
    assert took < BOUND_S, f"{took:.0f}s\n{out[-3000:]}"
    return out


def _exit_codes(tmp_path, exits: str = "exits") -> dict[int, int]:
    return {int(p.name[4:]): int(p.read_text()) for p in (tmp_path / exits).iterdir()}


def _resumes(tmp_path, cfg, stopped_at: int) -> None:
    """The stop checkpoint resumes: two more steps, then exit 0."""
    cfg.train.max_steps = stopped_at + 2
    launcher = _start(tmp_path, cfg, "--resume", exits="resumed")
    out = _output(launcher, timeout=300)
    assert launcher.returncode == 0, out[-3000:]
    assert f"at step {stopped_at}" in out.split("resumed from", 1)[1].splitlines()[0], out[-3000:]
    assert max(logged_losses(cfg.run_dir)) == stopped_at + 2
    assert _exit_codes(tmp_path, "resumed") == {0: 0, 1: 0}


def _stop_checkpoint(cfg) -> int:
    """The step of the one checkpoint the run saved (no save interval: only the stop saves)."""
    steps = [ckpt.read_meta(p)["step"] for p in (cfg.run_dir / "checkpoints").glob("step_*")]
    assert len(steps) == 1, steps
    return steps[0]


@pytest.mark.slow
@pytest.mark.parametrize("ctrl_c", [False, True], ids=["SIGTERM", "ctrl-c"])
def test_a_signal_to_torchrun_stops_every_process_at_one_step(tmp_path, text_200k, ctrl_c):
    """torchrun passes the signal on to each process, a little apart: they agree on the step to stop at, rank 0
    saves once, every process exits 130 (torchrun would kill them 30 s later), and the run resumes. Ctrl-C in a
    terminal sends SIGINT to the whole process group: each process hears it twice, directly and through torchrun."""
    cfg = _config(tmp_path, text_200k)
    launcher = _start(tmp_path, cfg, new_session=ctrl_c)
    ranks = _wait_training(launcher, cfg)
    t0 = time.time()
    if ctrl_c:
        os.killpg(launcher.pid, signal.SIGINT)
    else:
        launcher.send_signal(signal.SIGTERM)
    out = _finish(launcher, ranks, t0)
    assert _exit_codes(tmp_path) == {0: 130, 1: 130}, out[-3000:]
    assert "stopped by signal at step" in out and "Unable to shutdown process" not in out
    stopped_at = _stop_checkpoint(cfg)
    if not ctrl_c:
        _resumes(tmp_path, cfg, stopped_at)


@pytest.mark.slow
@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_a_signal_to_one_process_stops_them_all(tmp_path, text_200k, fsdp):
    """SIGTERM to one worker alone (a scheduler, or `kill`): the others learn of it at the end of the step."""
    cfg = _config(tmp_path, text_200k, **{"train.fsdp": fsdp})
    launcher = _start(tmp_path, cfg)
    ranks = _wait_training(launcher, cfg)
    t0 = time.time()
    os.kill(ranks[1], signal.SIGTERM)
    out = _finish(launcher, ranks, t0)
    assert _exit_codes(tmp_path) == {0: 130, 1: 130}, out[-3000:]
    assert "stopped by signal at step" in out
    stopped_at = _stop_checkpoint(cfg)
    if fsdp:  # its stop checkpoint gathers the shards: resume it (the launcher's test resumes a DDP one)
        _resumes(tmp_path, cfg, stopped_at)


@pytest.mark.slow
def test_a_process_blocked_in_a_collective_still_dies(tmp_path, text_200k):
    """Rank 1 frozen (SIGSTOP): rank 0 waits for it in the step's all-reduce, deaf to Python's signal handler. On
    SIGTERM it ends by itself, in one line and with 130, once the step has not ended within the grace period."""
    cfg = _config(tmp_path, text_200k)
    launcher = _start(tmp_path, cfg)
    ranks = _wait_training(launcher, cfg)
    os.kill(ranks[1], signal.SIGSTOP)
    t0 = time.time()
    try:
        os.kill(ranks[0], signal.SIGTERM)
        deadline = t0 + BOUND_S
        while Path(f"/proc/{ranks[0]}").exists() and _state(ranks[0]) != "Z" and time.time() < deadline:
            time.sleep(0.2)
        took = time.time() - t0
    finally:
        os.kill(ranks[1], signal.SIGCONT)  # torchrun, which saw rank 0 end, has asked it to stop too
    out = _finish(launcher, ranks, t0)
    assert took < BOUND_S, out[-3000:]
    assert "did not stop within" in out and "exitcode  : 130" in out, out[-3000:]


def _state(pid: int) -> str:
    """A process's state letter (R, S, T, Z, ...); "" once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


@pytest.mark.slow
def test_a_second_job_on_a_locked_run_folder_is_one_line_in_every_process(tmp_path, text_200k):
    """Rank 0 of a second job finds the run folder locked by the first: every process of the second job says so in
    one line and exits 2 (rank 1, waiting for rank 0, died of the broken connection with a traceback before)."""
    cfg = _config(tmp_path, text_200k)
    first = _start(tmp_path, cfg)
    ranks = _wait_training(first, cfg)
    try:
        second = _start(tmp_path, cfg, "--resume", exits="second")
        out = _output(second, timeout=300)
    finally:
        first.send_signal(signal.SIGTERM)
        _finish(first, ranks, time.time())
    assert _exit_codes(tmp_path, "second") == {0: 2, 1: 2}, out[-3000:]
    assert out.count(f"tinylm: error: run folder {cfg.run_dir} is in use by tinylm pid {ranks[0]}") == 2, out[-3000:]
    assert "DistBackendError" not in out and "Connection closed" not in out, out[-3000:]


# a process whose step never ends once a signal came (as one waiting in a collective for a process that is gone):
# the handler runs, but the main thread stays blocked
STUCK = """import os, sys
from tinylm.training import runtime
runtime.STOP_GRACE_S, runtime.REPEAT_S = float(sys.argv[1]), 1.0
read, _ = os.pipe()
with runtime.StopSignal() as stop:
    print("ready", flush=True)
    os.read(read, 1)
"""


def _stuck(tmp_path, grace: float) -> subprocess.Popen:
    script = tmp_path / "stuck.py"
    script.write_text(STUCK)
    proc = subprocess.Popen([sys.executable, str(script), str(grace)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV)
    assert proc.stdout.readline() == "ready\n"
    return proc


def _ended(proc: subprocess.Popen) -> str:
    """The process's stderr once it has ended (killed, and the test failed, if it has not within BOUND_S)."""
    try:
        return proc.communicate(timeout=BOUND_S)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("the process did not end") from None


def test_a_stop_not_reached_within_the_grace_period_ends_the_process(tmp_path):
    proc = _stuck(tmp_path, grace=1)
    t0 = time.time()
    proc.send_signal(signal.SIGTERM)
    err = _ended(proc)
    assert proc.returncode == 130 and time.time() - t0 >= 1
    assert err == ("tinylm: stopped at once: did not stop within 1 s of the signal (waiting for another process that "
                   "is stuck or gone?); nothing is saved since the last checkpoint (continue from it with --resume)\n")


def test_a_second_signal_ends_the_process_at_once_but_a_repeat_of_the_first_does_not(tmp_path):
    """Ctrl-C in a terminal reaches a torchrun worker twice, directly and through torchrun: that is one request."""
    proc = _stuck(tmp_path, grace=600)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)  # within REPEAT_S: the same request
    time.sleep(2.5)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    err = _ended(proc)
    assert proc.returncode == 130 and err.startswith("tinylm: stopped at once: a second signal (SIGTERM);"), err


@pytest.mark.slow
def test_a_killed_process_is_one_line_in_the_others(tmp_path, text_200k):
    """Rank 1 SIGKILLed (out of memory, a scheduler): rank 0 loses it inside a collective. It says so in one line and
    ends with status 1 at once: no traceback from gloo's broken connection, no abort from its threads at exit (the
    page that follows is torchrun's own report)."""
    cfg = _config(tmp_path, text_200k)
    launcher = _start(tmp_path, cfg)
    ranks = _wait_training(launcher, cfg)
    t0 = time.time()
    os.kill(ranks[1], signal.SIGKILL)
    out = _finish(launcher, ranks, t0)
    ours = re.split(r"torch[./]distributed[./]elastic", out)[0]  # what the processes said, before torchrun's lines
    assert ours.count("tinylm: error: process 0: a collective failed (") == 1, out[-3000:]
    assert "Connection" in ours and "nothing is saved since the last checkpoint" in ours, out[-3000:]
    assert "Traceback" not in ours and "terminate called" not in out, out[-3000:]
    assert "exitcode  : 1 " in out and "exitcode  : -9" in out, out[-3000:]  # rank 0 ended itself; rank 1 killed
    assert not (tmp_path / "exits").joinpath("rank0").exists()  # ended at once (os._exit), not through main()


MODES = ("launcher SIGTERM", "launcher SIGINT", "rank 1 SIGTERM", "rank 1 SIGKILL")


def count(out: Path, tries: int, modes: list[str] | tuple[str, ...] = MODES) -> None:
    """BENCHMARKS' reliability count: ``tries`` stops of each kind in ``modes``, one JSON line each: hung (or slower
    than BOUND_S), seconds from the signal to every process gone, exit codes (a process that ended itself at once has
    none), checkpoints saved, the exit codes torchrun reports for failed processes, and the processes' own output
    (before torchrun's report): its error lines and whether it holds a traceback."""
    import json
    import shutil

    from conftest import TINYSHAKESPEARE
    for mode in modes:
        for i in range(tries):
            tmp = out / f"{mode.replace(' ', '-')}-{i}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            (tmp / "text.txt").write_text(TINYSHAKESPEARE.read_text(encoding="utf-8")[:200_000], encoding="utf-8")
            cfg = _config(tmp, tmp / "text.txt")
            launcher = _start(tmp, cfg)
            ranks = _wait_training(launcher, cfg)
            t0 = time.time()
            if mode.startswith("rank"):
                os.kill(ranks[1], getattr(signal, mode.split()[-1]))
            else:
                launcher.send_signal(signal.SIGTERM if mode.endswith("SIGTERM") else signal.SIGINT)
            try:
                output, hung = _finish(launcher, ranks, t0), False
            except AssertionError:
                output, hung = "", True
            said = re.split(r"torch[./]distributed[./]elastic", output)[0]  # the processes' output, not torchrun's
            failures = re.findall(r"rank\s+: (\d+) \(local_rank: \d+\)\s+exitcode\s+: (-?\d+)", output)
            reported = {int(rank): int(code) for rank, code in failures}
            print(json.dumps({"mode": mode, "try": i, "hung": hung, "seconds": round(time.time() - t0, 1),
                              "exit_codes": _exit_codes(tmp), "torchrun_exit_codes": reported,
                              "error_lines": said.count("tinylm: error:"), "traceback": "Traceback" in said,
                              "checkpoints": len(list((cfg.run_dir / "checkpoints").glob("step_*")))}), flush=True)
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":  # python tests/test_ddp_signals.py OUT_DIR TRIES [MODE ...]
    count(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:] or MODES)

