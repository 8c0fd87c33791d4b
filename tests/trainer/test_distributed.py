"""Real DDP: two CPU processes (gloo) train the tiny model; weights stay identical, loss falls."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from figsearch.netutil import free_port
from tests.trainer.tiny import make_figure_store, train_log, write_tiny_config


def _worker(rank: int, world: int, port: int, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank), HF_HUB_OFFLINE="1")
    torch.set_num_threads(1)
    from trainer.train import TrainConfig, train

    base = Path(root)
    cfg = TrainConfig(out=base / "model", data_dir=base / "data", config=str(base / "tiny.json"),
                      epochs=3, batch_size=4, warmup=1, lr=2e-3, workers=0, progress=False,
                      max_minutes=30,  # exercises the ranks agreeing on time and schedule
                      log_every=1, val_fraction=0.25, device="cpu")
    result = train(cfg)
    torch.save({"state": result.model.state_dict(), "summary": result.summary},
               base / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_process_gloo_training(tmp_path):
    make_figure_store(tmp_path / "data", n_articles=12, per_article=4)
    write_tiny_config(tmp_path, "tiny")
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    assert rank0["summary"]["world_size"] == 2 and rank0["summary"]["steps"] >= 4
    for name, tensor in rank0["state"].items():
        torch.testing.assert_close(tensor, rank1["state"][name], msg=name)
    losses = [r["loss"] for r in train_log(Path(str(tmp_path / "model") + ".train"))]
    assert np.mean(losses[-2:]) < np.mean(losses[:2])
    assert (tmp_path / "model" / "open_clip_config.json").is_file()
