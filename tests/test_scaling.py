"""`tinylm scaling`: the IsoFLOP parabola, the L(N, D) fit on synthetic losses, a tiny study end to end."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tinylm.analysis import scaling
from tinylm.analysis.plan import load_frontier
from tinylm.analysis.sweep import Runner
from tinylm.config import to_toml
from tinylm.errors import TinyLMError

from conftest import tiny_config

CHINCHILLA = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


def isoflop_design(noise: float, seed: int = 0):
    """5 budgets x 7 sizes of Chinchilla's law, with multiplicative noise of ``noise`` (lognormal sigma)."""
    n = np.array([size for _ in range(5) for size in np.geomspace(3e7, 3e9, 7)])
    d = np.array([c / (6 * size) for c in np.geomspace(1e18, 1e21, 5) for size in np.geomspace(3e7, 3e9, 7)])
    loss = scaling.predict(CHINCHILLA, n, d) * np.exp(np.random.default_rng(seed).normal(0, noise, len(n)))
    return n, d, loss


def test_parabola_finds_a_known_optimum():
    n = np.geomspace(1e6, 1e8, 9)
    loss = 0.05 * (np.log(n) - np.log(7e6)) ** 2 + 2.5
    p = scaling.fit_parabola(1e15, list(n), list(loss))
    assert p.n_opt == pytest.approx(7e6, rel=1e-9) and p.loss_opt == pytest.approx(2.5)
    assert p.bracketed and p.d_opt == pytest.approx(1e15 / (6 * 7e6))
    assert scaling.fit_parabola(1e15, list(n), list(3 - 0.01 * np.log(n))) is None  # still falling: no minimum


def test_sizes_are_depths_or_depth_x_width():
    assert scaling.parse_size("3") == {"n_layer": 3, "n_embd": 192, "n_head": 3}
    assert scaling.parse_size("2x96") == {"n_layer": 2, "n_embd": 96, "n_head": 1}
    assert scaling.parse_size("2x96", head_size=32) == {"n_layer": 2, "n_embd": 96, "n_head": 3}
    with pytest.raises(TinyLMError, match="multiple of 64"):
        scaling.parse_size("2x200")
    with pytest.raises(TinyLMError, match="positive head size"):
        scaling.parse_size("2x64", head_size=0)


def test_the_window_keeps_pairs_near_the_optimum(tmp_path):
    cfg = tiny_config(tmp_path, "abc" * 100)  # 8 x 32 = 256 tokens a step
    shapes = [scaling.parse_size(s) for s in ("1x64", "2x64", "2x128")]
    count = scaling.non_embedding_counter(cfg)
    everything, none_left = scaling.study_points(cfg, [1e10, 1e11], shapes, count)
    assert len(everything) == 6 and none_left == []
    kept, left = scaling.study_points(cfg, [1e10, 1e11], shapes, count, window=(1, 100))
    for _, _, n, d in kept:
        assert 1 <= d / n <= 100
    assert len(kept) + len(left) == 6 and left and kept
    assert all(not 1 <= tpp <= 100 for _, _, tpp in left)
    assert {(c, name) for c, name, _ in left} == {(c, f"{p.overrides['model.n_layer']}x{p.overrides['model.n_embd']}")
                                                 for p, c, n, d in everything if not 1 <= d / n <= 100}


def test_frontier_through_known_optima():
    parabolas = [scaling.Parabola(c, (1, 0, 0), 0.1 * c**0.5, 2.0, True) for c in (1e15, 1e16, 1e17)]
    g, a = scaling.fit_frontier(parabolas)
    assert (g, a) == pytest.approx((0.1, 0.5))


def test_the_gradient_is_right_and_one_start_recovers_exact_losses():
    n, d, loss = isoflop_design(noise=0.0)
    args = tuple(np.log(v) for v in (n, d, loss))
    theta = np.array([5.0, 6.0, 0.3, 0.3, 0.25])
    from scipy.optimize import check_grad
    assert check_grad(lambda t: scaling._objective(t, *args)[0], lambda t: scaling._objective(t, *args)[1],
                      theta) < 1e-6
    fit = scaling.fit_law(n, d, loss, starts=[(5, 5, 0.5, 0.3, 0.3)])  # far from the truth
    assert fit == pytest.approx(CHINCHILLA, rel=1e-3)


@pytest.mark.slow
def test_the_fit_recovers_known_parameters_from_noisy_losses():
    """0.5% noise (the seed-to-seed spread of small runs): exponents within 0.02, E within 3%, A and B within 10%;
    the bootstrap intervals hold the estimates and the prediction's interval holds the prediction."""
    n, d, loss = isoflop_design(noise=0.005)
    fit = scaling.fit_law_with_ci(n, d, loss, resamples=20)
    p = fit.params
    assert abs(p["alpha"] - 0.34) < 0.02 and abs(p["beta"] - 0.28) < 0.02
    assert p["E"] == pytest.approx(1.69, rel=0.03)
    assert p["A"] == pytest.approx(406.4, rel=0.1) and p["B"] == pytest.approx(410.7, rel=0.1)
    assert all(fit.low[k] <= fit.high[k] for k in scaling.PARAMS)
    value, low, high = fit.predict(1e10, 2e11)
    assert low <= value <= high
    assert value == pytest.approx(float(scaling.predict(CHINCHILLA, 1e10, 2e11)), rel=0.01)


def test_a_bootstrap_of_fits_that_give_up_on_a_floor_does_not_overflow(monkeypatch):
    """A fit that gives up on a floor has A = e^a ~ 1e170: its square overflowed in the bootstrap's standard error
    (numpy's overflow warning in the suite). The bootstrap runs in log space; the intervals are the same."""
    import warnings

    def floorless(starts, log_n, log_d, log_l):  # each resample's "fit": a ~ 390, varying with the resample
        return np.array([350 + 50 * float(np.mean(log_l)), 5.0, float(np.mean(log_l)), 0.3, 0.3])
    monkeypatch.setattr(scaling, "_minimize", floorless)
    n, d, loss = isoflop_design(noise=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = scaling.fit_law_with_ci(n, d, loss, resamples=50)
    assert fit.params["A"] > 1e160 and all(fit.low[k] <= fit.high[k] for k in scaling.PARAMS)
    a = sorted(math.log(s["A"]) for s in fit.samples)
    assert math.log(fit.low["A"]) == pytest.approx(float(np.percentile(a, 2.5)), rel=1e-9)
    assert math.log(fit.high["A"]) == pytest.approx(float(np.percentile(a, 97.5)), rel=1e-9)


def test_lr_width_scales_the_rate_inversely_with_the_width(tmp_path):
    cfg = tiny_config(tmp_path, "abc" * 100, **{"optim.lr": 2e-3})
    shapes = [scaling.parse_size(s) for s in ("1x64", "2x128")]
    count = scaling.non_embedding_counter(cfg)
    plain, _ = scaling.study_points(cfg, [1e10], shapes, count)
    assert all("optim.lr" not in p.overrides for p, *_ in plain)  # one rate: the config's
    scaled, _ = scaling.study_points(cfg, [1e10], shapes, count, lr_width=64)
    assert [p.overrides["optim.lr"] for p, *_ in scaled] == pytest.approx([2e-3, 1e-3])
    with pytest.raises(TinyLMError, match="--lr-width 0: give the width"):
        scaling.run_scaling(None, [1e10], ["1"], tmp_path / "s", lr_width=0)


@pytest.mark.slow
def test_a_tiny_study_runs_fits_predicts_and_verifies(tmp_path, text_200k, monkeypatch):
    from tinylm.cli import main
    calls: list = []

    def launch(cmd, env):  # `tinylm train` in this process: fast
        import subprocess
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, main(cmd[cmd.index("train"):]), "", "")
    monkeypatch.setattr(Runner, "launch", staticmethod(launch))
    cfg = tiny_config(tmp_path, text_200k, **{"train.log_interval": 1, "train.eval_tokens": 256,
                                              "optim.warmup_steps": 0})
    base = tmp_path / "base.toml"
    base.write_text(to_toml(cfg))
    out = tmp_path / "study"
    result = scaling.run_scaling(base, [3e8, 1e9], ["1", "2x64", "2"], out, verify=(4e5, 3e4), resamples=10,
                                 head_size=32, lr_width=64, seeds=2, log=lambda *a: None)
    assert len(calls) == 14  # (2 budgets x 3 depths + the verification run) x 2 seeds
    runs = result["runs"]
    assert [r["size"] for r in runs] == ["1x64", "2x64", "2x128"] * 2 and all(r["loss"] for r in runs)
    import tomllib  # head_size=32: two heads at width 64, four at 128
    heads = {p.name: tomllib.loads((p / "seed0" / "config.toml").read_text())["model"]["n_head"]
             for p in (out / "runs").iterdir()}
    assert heads["C=1e+09,size=1x64"] == 2 and heads["C=1e+09,size=2x128"] == 4
    assert [r["lr"] for r in runs[:3]] == pytest.approx([cfg.optim.lr, cfg.optim.lr, cfg.optim.lr / 2])  # lr_width=64
    by_point: dict = {}  # seeds=2: each point's loss is the mean of its two runs
    for r in json.loads((out / "results.json").read_text()):
        by_point.setdefault(r["point"], []).append(r["final_val_loss"])
    assert all(len(v) == 2 and v[0] != v[1] for v in by_point.values())
    assert runs[0]["loss"] == pytest.approx(sum(by_point["C=3e+08,size=1x64"]) / 2) and runs[0]["seeds"] == 2
    assert "(mean of 2 seeds)" in (out / "scaling.md").read_text()
    for r in runs:  # D = C / 6N, to within one step of tokens
        assert abs(r["D"] - r["budget"] / (6 * r["N"])) <= 8 * 32 / 2 or r["D"] == 8 * 32
    pred = result["prediction"]
    assert pred["measured"] is not None and pred["error"] == pytest.approx(pred["loss"] / pred["measured"] - 1)
    text = (out / "scaling.md").read_text()
    assert "## Prediction" in text and "Measured:" in text and "Chinchilla" in text
    inside = pred["low"] <= pred["measured"] <= pred["high"]
    assert f"{'inside' if inside else 'outside'} the 95% interval" in text
    assert json.loads((out / "scaling.json").read_text())["law"]["params"].keys() == set(scaling.PARAMS)
    assert (out / "scaling.png").is_file()
    if result["frontier"]:  # a frontier `tinylm plan --scaling` can read
        assert load_frontier(out).a == pytest.approx(result["frontier"]["a"])


@pytest.mark.parametrize("argv, message", [
    (["--budgets", "0,1e9"], "--budgets 0: each budget must be a positive, finite number of FLOPs"),
    (["--budgets", "1e400,1e9"], "--budgets inf: each budget must be a positive, finite number of FLOPs"),
    (["--budgets", "1e9"], "--budgets 1e+09: an IsoFLOP study needs at least 2 budgets"),
    (["--budgets", "1e9,3e9", "--sizes", "2"], "--sizes 2: a study needs at least 3 sizes"),
    (["--budgets", "1e11,3e11", "--sizes", "1,2,3", "--tokens-per-param", "0.05,30"],  # 3x192 falls out
     "only 4 budget x size pair(s) to train (see --tokens-per-param): the L(N, D) fit has 5 parameters"),
    (["--budgets", "1e40,3e40"], "the study's 8 run(s) x 1 seed(s) need 6ND = "),
])
def test_a_study_that_cannot_be_fitted_or_finished_is_refused_before_training(tmp_path, text_200k, capsys,
                                                                              monkeypatch, argv, message):
    from tinylm.cli import main
    monkeypatch.setattr(Runner, "launch", staticmethod(lambda cmd, env: pytest.fail("a run was started")))
    base = tmp_path / "base.toml"
    base.write_text(to_toml(tiny_config(tmp_path, text_200k)))
    assert main(["scaling", "--config", str(base), *argv, "--out", str(tmp_path / "study")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tinylm: error: ") and message in err[0], err
    assert not (tmp_path / "study").exists()
    if argv[1] == "1e40,3e40":  # the time it would take, at this machine's peak
        assert "days even at this cpu's peak" in err[0] and "give smaller --budgets" in err[0]


def test_a_bad_window_is_one_line(capsys):
    from tinylm.cli import main
    with pytest.raises(SystemExit) as e:
        main(["scaling", "--budgets", "1e12", "--tokens-per-param", "50,2"])
    assert e.value.code == 2 and "0 < LOW < HIGH" in capsys.readouterr().err


def test_scaling_md_says_when_the_fit_gives_up_on_a_floor():
    law = {"E": 1e-10, "A": 4.3, "B": 398.0, "alpha": 0.11, "beta": 0.46}
    result = {"convention": "N = non-embedding parameters; C = 6ND", "lr_width": 96, "seeds": 2, "left_out": [],
              "runs": [{"budget": 1e12, "size": "2x32", "N": 24736, "D": 6737920, "lr": 9e-3, "loss": 1.7, "seeds": 1}],
              "parabolas": [], "no_minimum": [], "frontier": None, "law": {"params": law, "low": law, "high": law}}
    text = scaling.render(result, None)
    assert "E went to 0" in text and "(mean of 2 seeds)" in text and "1 of 2 seeds ran" in text
    assert "Learning rate x 96 / width" in text and "| 0.009 |" in text
    assert "E went to 0" not in scaling.render({**result, "law": {"params": {**law, "E": 0.5}, "low": law,
                                                                  "high": law}}, None)



def test_the_isoflop_plot_labels_the_sizes_studied_and_says_when_there_is_no_frontier(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(scaling, "save_figure", lambda plt, fig, path, **kw: figures.append(fig) or True)
    sizes = [49_152, 98_304, 393_216]  # one budget: no frontier
    runs = [{"N": n, "D": 3e8 / (6 * n), "loss": loss, "budget": 3e8}
            for n, loss in zip(sizes, (3.68, 3.66, 3.74), strict=True)]
    parabola = scaling.fit_parabola(3e8, sizes, [r["loss"] for r in runs])
    law = scaling.LawFit({"E": 1.0, "A": 1.0, "B": 1.0, "alpha": 0.3, "beta": 0.3}, {}, {},
                         [{"E": 1.0, "A": 1.0, "B": 1.0, "alpha": 0.3, "beta": 0.3}])
    assert scaling.plot_scaling({"runs": runs, "frontier": None}, [parabola], law, tmp_path / "s.png")
    iso, front, _ = figures[0].axes
    figures[0].canvas.draw()
    assert [t.get_text() for t in iso.get_xticklabels()] == ["49k", "98k", "393k"]
    assert not any(t.get_text() for t in iso.get_xticklabels(minor=True))  # no crowded minor labels
    assert not front.axison and "no frontier" in front.texts[0].get_text()


def test_predict_is_finite_where_n_to_the_alpha_overflows():
    """A fit can give A ~ 1e170 with alpha ~ 30: N^alpha overflows a float though A / N^alpha does not (the suite
    showed numpy's overflow warning); the prediction is the same as the plain formula's where that one is finite."""
    wild = {"E": 1.5, "A": 1e170, "alpha": 30.0, "B": 400.0, "beta": 0.3}
    with np.errstate(all="raise"):
        loss = scaling.predict(wild, np.array([1e6, 1e7]), np.array([1e8, 1e9]))
    assert np.all(np.isfinite(loss)) and loss[0] > loss[1] > 1.5
    chinchilla = {"E": 1.69, "A": 406.4, "alpha": 0.34, "B": 410.7, "beta": 0.28}
    assert scaling.predict(chinchilla, 1e8, 1e10) == pytest.approx(1.69 + 406.4 / 1e8**0.34 + 410.7 / 1e10**0.28)
