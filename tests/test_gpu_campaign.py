"""The prepared GPU campaign's path at toy size on a CPU (``--smoke``): both lanes run and write records."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from benchmarks import gpu_campaign, store


def test_smoke_campaign_writes_cell_records(tiny_dataset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            forked_cells: list[list[str]], popen_forked) -> None:
    # The lanes' `python -m benchmarks.offline_rl` jobs and their cells run as forked processes (conftest.py).
    jobs: list[list[str]] = []

    def popen(cmd: list[str], **kw):
        jobs.append(cmd)
        return popen_forked(cmd, **kw)

    monkeypatch.setattr(gpu_campaign, "subprocess", types.SimpleNamespace(
        Popen=popen, STDOUT=subprocess.STDOUT, TimeoutExpired=subprocess.TimeoutExpired))
    rc = gpu_campaign.main(["--smoke", "--dataset", tiny_dataset, "--out", str(tmp_path / "c"),
                            "--store", str(tmp_path / "s"), "--cpu-workers", "1", "--budget-s", "240"])
    assert rc == 0
    recs = store.load(tmp_path / "s")
    assert sorted(recs) == sorted(f"{a}__tiny_pendulum_mixed-v0__s0" for a in
                                  ("vaco-k_step", "vaco-implicit", "bc", "bc-top25"))
    # K-step (K=5) at equal policy steps: 40 policy steps are 8 outer updates of 5 after the 20 value updates
    k = recs["vaco-k_step__tiny_pendulum_mixed-v0__s0"]
    assert k["policy_steps"] == 40 and k["steps"] == 28 and k["policy_steps_per_update"] == 5
    summary = json.loads((tmp_path / "c" / "campaign.json").read_text())
    assert all(j["state"] == "finished" for j in summary["jobs"]), summary
    assert len(summary["new_cells"]) == 4
    assert [j[:3] for j in jobs] == [[sys.executable, "-m", "benchmarks.offline_rl"]] * 3  # 2 GPU-lane jobs, 1 CPU lane


def test_campaign_refuses_without_a_gpu_in_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    import pytest
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as e:
        gpu_campaign.main(["--out", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--smoke" in err
