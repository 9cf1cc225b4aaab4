"""`tinylm plan`: Chinchilla-optimal sizes, FLOPs and cost, from known answers."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tinylm.analysis import plan as planner
from tinylm.analysis.gpus import DEVICES
from tinylm.cli import main
from tinylm.errors import TinyLMError


def test_124m_parameters_take_2_48b_tokens_and_1_85e18_flops():
    p = planner.plan(params=124e6, gpu="h100")
    assert p.tokens == pytest.approx(2.48e9)
    assert p.flops_6nd == pytest.approx(1.8451e18, rel=1e-4)
    assert p.flops > p.flops_6nd  # attention's term comes on top


def test_every_input_gives_the_same_plan():
    """From the tokens, the 6ND FLOPs or the dollars of a 124M plan, the planner finds 124M again."""
    ref = planner.plan(params=124e6, gpu="a100")
    for kwargs in ({"tokens": 2.48e9}, {"flops": ref.flops_6nd}, {"budget_usd": ref.usd}):
        p = planner.plan(gpu="a100", **kwargs)
        assert p.params == pytest.approx(124e6, rel=1e-3), kwargs
        assert p.tokens == pytest.approx(2.48e9, rel=1e-3), kwargs


def test_time_and_cost_follow_peak_mfu_and_price():
    p = planner.plan(params=124e6, gpu="h100", mfu=0.5, n_gpus=2)
    dev = DEVICES["h100"]
    hours = p.flops / (989e12 * 0.5 * 2) / 3600
    assert p.hours == pytest.approx(hours)
    assert p.usd == pytest.approx(hours * 2 * dev.usd_per_hour)
    assert p.usd_per_million_tokens == pytest.approx(p.usd / 2480)


def test_a_fitted_frontier_replaces_the_20_tokens_rule(tmp_path):
    (tmp_path / "scaling.json").write_text(json.dumps({"frontier": {"g": 0.1, "a": 0.5}}))
    frontier = planner.load_frontier(tmp_path)
    p = planner.plan(flops=1e20, frontier=frontier)
    assert p.params == pytest.approx(0.1 * 1e10)
    assert p.tokens == pytest.approx(1e20 / (6 * 1e9))
    back = planner.plan(params=p.params, frontier=frontier)  # N on the frontier: its D
    assert back.tokens == pytest.approx(p.tokens)


def test_measured_mfu_is_the_runs_median(tmp_path):
    lines = [{"step": s, "loss": 1.0, "mfu": m} for s, m in ((1, 0.1), (2, 0.3), (3, 0.2))] + [{"step": 3,
                                                                                               "val_loss": 1.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert planner.measured_mfu(tmp_path) == pytest.approx(0.2)


def test_shape_rule_is_gpt2_small_at_depth_12():
    assert planner.shape_for(12) == {"n_layer": 12, "n_embd": 768, "n_head": 12}
    assert planner.depth_for(85e6) == 12  # GPT-2 small's non-embedding count


def test_refusals_say_what_to_do():
    with pytest.raises(TinyLMError, match="exactly one of"):
        planner.plan(params=1e6, tokens=1e9)
    with pytest.raises(TinyLMError, match="not in the table"):
        planner.plan(params=1e6, gpu="h900")
    with pytest.raises(TinyLMError, match="'12x' is not an amount; write"):
        planner.parse_amount("12x")  # the library's own error, not the command line's


@pytest.mark.parametrize("argv, flag", [(["plan", "--params", "12x"], "--params"),
                                        (["scaling", "--budgets", "1e12,12x"], "--budgets")])
def test_cli_names_the_flag_whose_amount_is_not_one(capsys, argv, flag):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert f"error: argument {flag}: '12x' is not an amount" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--flops", "1e400"], "--flops inf is too large to plan: its FLOPs or cost overflow a float"),
    (["--params", "1e300"], "--params 1e+300 is too large to plan"),
    (["--params", "1M", "--context", "-1"], "--context -1 must be at least 1 token"),
    (["--table", "--context", "0"], "--context 0 must be at least 1 token"),
])
def test_cli_plan_refuses_absurd_amounts_in_one_line(capsys, argv, message):
    assert main(["plan", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"tinylm: error: {message}")


def test_cli_plan_prints_known_answers(capsys):
    assert main(["plan", "--params", "124M", "--gpu", "h100"]) == 0
    out = capsys.readouterr().out
    assert "2.48B" in out and "6ND = 1.85e+18" in out and "$" in out


def test_cli_plan_table_covers_10m_to_7b(capsys):
    assert main(["plan", "--table", "--gpu", "h100-spot"]) == 0
    out = capsys.readouterr().out
    assert "| 10M | 200M |" in out and "| 7B | 140B |" in out and "h100-spot" in out


def test_cli_plan_refuses_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "tinylm", "plan", "--params", "1M", "--flops", "1e18"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines() == ["tinylm: error: give exactly one of --params, --tokens, --flops, "
                                             "--budget-usd (got --params, --flops)"]
