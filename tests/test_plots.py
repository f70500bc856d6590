"""learning_curve.png: which series it draws, how its symlog axis is labelled, how many evaluations."""

from __future__ import annotations

import json
import re

from rl_adapters.training import TrainConfig, default_eval_every, loss_series, train
from rl_adapters.training.plots import symlog_decades


def _rows(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]


def test_loss_series_has_the_losses_that_start_later(tiny_dataset, tmp_path):
    """VACO's bi-level losses exist only in phase 2; the first metrics row has none of them."""
    out = tmp_path / "vaco"
    cfg = TrainConfig(algo="vaco", dataset=tiny_dataset, steps=40, device="cpu", out=str(out), eval_episodes=0,
                      log_every=5, progress=False,
                      hparams={"hidden_dim": 16, "scorer_hidden_dim": 16, "batch_size": 16})
    train(cfg)
    rows = _rows(out)
    assert "outer_loss" not in rows[0]
    series = loss_series(rows)
    assert {"value_loss", "critic_loss", "inner_loss", "outer_loss", "bc_loss"} <= set(series)
    assert series["outer_loss"][0] == [25, 30, 35, 40]  # value_steps = 20
    assert series["value_loss"][0] == [5, 10, 15, 20]
    assert (out / "learning_curve.png").stat().st_size > 1000


def test_symlog_axis_labels_decades_only():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # here, not at collection: pyplot costs half a second to import

    fig, ax = plt.subplots()
    values = [-1.5, -0.9, 0.159708, 0.2, 3.0, 1.2e3]
    ax.plot(range(len(values)), values)
    symlog_decades(ax, values)
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    plt.close(fig)
    assert "0" in labels and "$10^{3}$" in labels and "$-10^{0}$" in labels
    assert all(lab == "0" or re.fullmatch(r"\$-?10\^\{-?\d+\}\$", lab) for lab in labels), labels


def test_default_eval_cadence_is_ten_evaluations(tiny_dataset, tmp_path):
    assert default_eval_every(100_000) == 10_000 and default_eval_every(25) == 3 and default_eval_every(5) == 1
    out = tmp_path / "bc"
    cfg = TrainConfig(algo="bc", dataset=tiny_dataset, steps=20, device="cpu", out=str(out), eval_episodes=1,
                      log_every=10, progress=False, plot=False, hparams={"hidden_dim": 16})
    train(cfg)
    assert [r["step"] for r in _rows(out) if "eval_return" in r] == list(range(2, 21, 2))
    assert json.loads((out / "config.json").read_text())["eval_every"] == 2
