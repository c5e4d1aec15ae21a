"""`make gpu-check`'s script in its dry mode (the tiny model on this CPU): it runs end to end, one figure a line,
``mfu=`` last. (Run here inside pytest, the process holds more than a worker does: the estimate's accuracy is
checked in a process of its own, tests/test_memory_estimate.py.)"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

import gpu_check  # noqa: E402


def test_the_dry_run_prints_one_figure_a_line_with_mfu_last(tiny_model_dir, tmp_path, capsys):
    lines = gpu_check.main(["--dry", "--workdir", str(tmp_path)])
    assert capsys.readouterr().out.splitlines() == lines
    assert lines[0].startswith("device=cpu") and lines[-1] == "mfu=n/a (no CUDA: dry run)"
    assert sum(line.startswith("mfu=") for line in lines) == 1
    peaks = [line for line in lines if " peak_gb=" in line]
    assert len(peaks) == 2  # with and without gradient checkpointing
    for line in peaks:
        assert float(re.search(r"estimate_gb=([\d.]+)", line).group(1)) > 0
        assert float(re.search(r"peak_gb=([\d.]+)", line).group(1)) > 0
    rates = [line for line in lines if "tokens_per_s=" in line]
    assert len(rates) == 4 and all(float(line.rsplit("=", 1)[1]) > 0 for line in rates)
    assert "train[tiny qlora] skipped (a 4-bit base needs CUDA)" in lines


def test_mfu_is_six_flops_per_parameter_per_token_over_the_cards_published_peak():
    assert gpu_check.card_peak("NVIDIA H100 80GB HBM3") == 989.4
    assert gpu_check.card_peak("NVIDIA H100 PCIe") == 756.0
    assert gpu_check.card_peak("NVIDIA GeForce RTX 4090") == 165.2
    assert gpu_check.card_peak("NVIDIA L4") == 121.0 and gpu_check.card_peak("NVIDIA A10G") == 70.0
    assert gpu_check.card_peak("Some Future Card") is None
    # 8.03B parameters at 2,000 tokens/s on an H100: 6 * 8.03e9 * 2e3 / 989.4e12
    assert abs(gpu_check.mfu(8_030_261_248, 2000, 989.4) - 0.0974) < 1e-3
