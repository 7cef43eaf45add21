"""torchrun with 2 CPU processes (gloo): sharded data, identical weights on both ranks, falling loss."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from resnet_xray.datasets import ReferenceOptions, make_reference_dataset
from resnet_xray.model import load_model

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not torch.distributed.is_available(), reason="this PyTorch build has no torch.distributed")
def test_torchrun_two_cpu_processes(tmp_path):
    data = tmp_path / "data"
    make_reference_dataset(data, ReferenceOptions(classes=3, per_class=8, val_per_class=3, size=32, seed=6))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "resnet_xray", "finetune", str(data), "--out", str(out), "--arch", "resnet18", "--weights", "random",
           "--epochs", "4", "--batch-size", "4", "--workers", "0", "--lr", "0.02", "--warmup-epochs", "0",
           "--label-smoothing", "0", "--no-progress", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["rank_weight_max_diff"] == 0.0  # DDP kept both replicas bit-identical
    # 24 images over 2 ranks of batch 4: 3 steps per epoch on each rank.
    assert summary["global_step"] == 4 * 3
    losses = [row["train_loss"] for row in summary["history"]]
    assert losses[-1] < losses[0], losses
    # Validation was reduced over both shards: every image counted once.
    assert summary["final"]["images"] == 9
    # Only rank 0 wrote, and what it wrote loads like any checkpoint.
    assert "validation accuracy" in done.stdout and done.stdout.count("validation accuracy") == 1
    model, meta = load_model(None, out / "best.pt")
    assert meta.class_names == ["circle", "square", "triangle"]
