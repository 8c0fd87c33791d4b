"""``figsearch train``: contrastive training / fine-tuning of open_clip models on the figure store.

Recipe defaults follow BiomedCLIP (AdamW lr 5e-4, wd 0.2, betas 0.9/0.98, eps 1e-6, cosine
with warmup). Runs on one CPU, one GPU (bf16 autocast) or many GPUs/nodes under ``torchrun``
(DDP; ``ClipLoss(local_loss=True, gather_with_grad=True)``). Gradient accumulation caches
the features of the other micro-batches so that every step sees the full batch's negatives
(as open_clip's trainer does). State lives beside the model directory in ``<out>.train/``
(checkpoint, JSON log, TensorBoard); the model directory itself is written by the exporter.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from figsearch.encoders import LoadedClip, ModelLoadError, create_clip, make_transform


@dataclass
class TrainConfig:
    """Everything a training run needs; the CLI flags map one to one."""

    out: Path
    data_dir: Path | None = None
    config: str | None = "figclip-mini"
    init: str | None = None
    epochs: int = 10
    batch_size: int = 64
    lr: float = 5e-4
    wd: float = 0.2
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    warmup: int = 100
    accum_steps: int = 1
    grad_checkpointing: bool = False
    lock_image: bool = False
    lock_text: bool = False
    max_minutes: float | None = None
    max_steps: int | None = None
    wds: str | None = None
    resume: bool = False
    workers: int = 2
    seed: int = 0
    val_fraction: float = 0.1
    val_max: int = 2000
    device: str | None = None
    log_every: int = 10
    progress: bool = True

    @property
    def state_dir(self) -> Path:
        return Path(str(self.out).rstrip("/") + ".train")


@dataclass
class Dist:
    """Where this process sits in a (possibly 1-process) DDP job."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def main(self) -> bool:
        return self.rank == 0


@dataclass
class RunState:
    """Progress that a checkpoint must restore."""

    epoch: int = 0  # current epoch (0-based)
    batch_in_epoch: int = 0  # micro-batches of `epoch` already trained
    step: int = 0  # optimizer steps done
    total_steps: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class TrainResult:
    model: Any
    summary: dict[str, Any]


class TrainError(RuntimeError):
    """Training cannot start; the message says why and what to do."""


# --------------------------------------------------------------------------- setup
def setup_distributed(device: str | None) -> Dist:
    """Join the torchrun / spawn process group if ``WORLD_SIZE`` > 1 (NCCL on GPU, else gloo)."""
    import torch
    import torch.distributed as tdist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    use_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    dev = f"cuda:{local_rank}" if use_cuda else "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if world > 1 and not tdist.is_initialized():
        tdist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world)
    return Dist(rank, world, local_rank, dev)


def build_model(cfg: TrainConfig, dist: Dist) -> LoadedClip:
    """The model to train: ``--init`` (fine-tune) or a fresh ``--config``; towers locked as asked."""
    spec = cfg.init or cfg.config
    if not spec:
        raise TrainError("give --config NAME|PATH (fresh model) or --init SPEC (fine-tune)")
    loaded = create_clip(spec, device="cpu")
    model = loaded.model
    if cfg.lock_image:
        model.lock_image_tower(unlocked_groups=0, freeze_bn_stats=True)
    if cfg.lock_text:
        model.lock_text_tower(unlocked_layers=0, freeze_layer_norm=True)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    model.output_dict = True
    model.to(dist.device)
    return loaded


def make_optimizer(model: Any, cfg: TrainConfig) -> Any:
    """AdamW; no weight decay on gains, biases, norms and the logit scale (open_clip's rule)."""
    import torch

    def exempt(name: str, p: Any) -> bool:
        return p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name

    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in params if exempt(n, p)], "weight_decay": 0.0},
        {"params": [p for n, p in params if not exempt(n, p)], "weight_decay": cfg.wd},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)


# --------------------------------------------------------------------------- data
def epoch_indices(n: int, epoch: int, seed: int, dist: Dist, batch: int) -> list[int]:
    """This rank's shuffled indices for ``epoch``: same order on every run, equal length per rank."""
    import torch

    gen = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = torch.randperm(n, generator=gen).tolist()
    per_rank = (n // (dist.world * batch)) * batch  # drop_last: full batches, same count per rank
    return order[dist.rank * per_rank:(dist.rank + 1) * per_rank]


def store_batches(
    cfg: TrainConfig, pairs: list[Any], transform: Any, epoch: int, skip: int, dist: Dist
) -> Iterator[tuple[Any, list[str]]]:
    """Micro-batches of (pixels, captions) for one epoch, skipping ``skip`` already trained."""
    from torch.utils.data import DataLoader

    from trainer.data import PairDataset, collate_pairs

    indices = epoch_indices(len(pairs), epoch, cfg.seed, dist, cfg.batch_size)
    indices = indices[skip * cfg.batch_size:]
    loader: DataLoader[Any] = DataLoader(
        PairDataset(pairs, transform), batch_size=cfg.batch_size, sampler=indices,
        num_workers=cfg.workers, collate_fn=collate_pairs, drop_last=True,
        pin_memory=dist.device.startswith("cuda"), persistent_workers=False,
    )
    yield from loader


def prepare_data(cfg: TrainConfig, loaded: LoadedClip, dist: Dist) -> dict[str, Any]:
    """Train pairs (or WebDataset info), validation pairs, transforms, batches per epoch."""
    from figsearch.core.config import Settings
    from figsearch.store import FigureStore
    from trainer.data import load_pairs

    train_tf = make_transform(loaded.preprocess_cfg, train=True)
    data: dict[str, Any] = {"train_tf": train_tf, "val": [], "train": []}
    if cfg.data_dir is not None:
        settings = Settings(data_dir=cfg.data_dir)
        if not settings.db_path.is_file():
            raise TrainError(f"no figure store at {settings.db_path}: ingest figures first")
        store = FigureStore(settings.db_path, create=False)
        try:
            if not cfg.wds:
                data["train"] = load_pairs(store, settings.images_dir, "train", cfg.val_fraction)
            data["val"] = load_pairs(store, settings.images_dir, "val", cfg.val_fraction,
                                     limit=cfg.val_max)
        finally:
            store.close()
    if cfg.wds:
        from trainer.wds import count_train_samples

        data["wds_count"] = count_train_samples(cfg.wds)
        n = data["wds_count"]
    else:
        n = len(data["train"])
    micro = n // (dist.world * cfg.batch_size)
    if micro < cfg.accum_steps:
        raise TrainError(
            f"{n} training pairs are too few for batch {cfg.batch_size} x accum "
            f"{cfg.accum_steps} x {dist.world} processes; lower --batch-size or add data"
        )
    data["micro_per_epoch"] = micro - micro % cfg.accum_steps
    return data


def epoch_batches(cfg: TrainConfig, data: dict[str, Any], epoch: int, skip: int, dist: Dist
                  ) -> Iterator[tuple[Any, list[str]]]:
    if cfg.wds:
        from trainer.wds import wds_batches

        return wds_batches(cfg.wds, data["train_tf"], cfg.batch_size,
                           data["micro_per_epoch"] - skip, cfg.seed + epoch, dist, cfg.workers)
    return store_batches(cfg, data["train"], data["train_tf"], epoch, skip, dist)


# --------------------------------------------------------------------------- one step
def _autocast(device: str) -> Any:
    import torch

    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step(
    model: Any, loss_fn: Any, micro: list[tuple[Any, Any]], optimizer: Any, device: str
) -> float:
    """One optimizer step over ``micro`` (images, tokens) batches; returns the loss."""
    import torch

    if len(micro) == 1:
        with _autocast(device):
            out = model(micro[0][0], micro[0][1])
            loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        loss.backward()
    else:
        with torch.no_grad(), _autocast(device):
            cached = [model(images, tokens) for images, tokens in micro]
        for j, (images, tokens) in enumerate(micro):
            sync = model.no_sync() if hasattr(model, "no_sync") and j < len(micro) - 1 \
                else contextlib.nullcontext()
            with sync, _autocast(device):
                out = model(images, tokens)
                img = torch.cat([out["image_features"] if k == j else c["image_features"]
                                 for k, c in enumerate(cached)])
                txt = torch.cat([out["text_features"] if k == j else c["text_features"]
                                 for k, c in enumerate(cached)])
                loss = loss_fn(img, txt, out["logit_scale"])
            loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():  # CLIP's cap on the temperature
        unwrap(model).logit_scale.clamp_(0, math.log(100))
    return float(loss.detach())


def unwrap(model: Any) -> Any:
    return getattr(model, "module", model)


# --------------------------------------------------------------------------- checkpoints
def checkpoint_path(cfg: TrainConfig) -> Path:
    return cfg.state_dir / "checkpoint.pt"


def save_checkpoint(cfg: TrainConfig, model: Any, optimizer: Any, state: RunState) -> None:
    """Atomically write everything needed to continue exactly where training is now."""
    import torch

    path = checkpoint_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
        "state": dataclasses.asdict(state), "config": _config_dict(cfg),
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                "python": random.getstate()},
    }
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(cfg: TrainConfig, model: Any, optimizer: Any) -> RunState:
    """Restore model, optimizer, progress and RNG from the checkpoint of an earlier run."""
    import torch

    payload = torch.load(checkpoint_path(cfg), map_location="cpu", weights_only=False)
    unwrap(model).load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    torch.set_rng_state(payload["rng"]["torch"])
    np.random.set_state(payload["rng"]["numpy"])
    random.setstate(payload["rng"]["python"])
    return RunState(**payload["state"])


def _config_dict(cfg: TrainConfig) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()}


# --------------------------------------------------------------------------- logging
class RunLog:
    """JSON-lines log plus TensorBoard scalars (main process only)."""

    def __init__(self, directory: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.path = directory / "log.jsonl"
        self.writer = None
        if enabled:
            directory.mkdir(parents=True, exist_ok=True)
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(directory / "tensorboard"))

    def write(self, event: str, step: int, **values: Any) -> None:
        if not self.enabled:
            return
        record = {"event": event, "step": step, "time": time.time(), **values}
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        for name, value in values.items():
            if isinstance(value, (int, float)) and self.writer is not None:
                self.writer.add_scalar(f"{event}/{name}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# --------------------------------------------------------------------------- the loop
def _set_seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _start_state(cfg: TrainConfig, model: Any, optimizer: Any, micro_per_epoch: int) -> RunState:
    if checkpoint_path(cfg).is_file():
        if not cfg.resume:
            raise TrainError(
                f"{checkpoint_path(cfg)} exists from an earlier run: pass --resume to continue it "
                f"or remove {cfg.state_dir} to start over"
            )
        state = load_checkpoint(cfg, model, optimizer)
        # this run's limits apply anew (a run stopped by --max-minutes/--max-steps can go on);
        # after a crash with unchanged flags the plan, hence the schedule, is the same
        state.total_steps = _planned_steps(cfg, micro_per_epoch)
        return state
    return RunState(total_steps=_planned_steps(cfg, micro_per_epoch))


def _planned_steps(cfg: TrainConfig, micro_per_epoch: int) -> int:
    total = cfg.epochs * micro_per_epoch // cfg.accum_steps
    return min(cfg.max_steps, total) if cfg.max_steps else total


def train(cfg: TrainConfig, on_epoch_end: Callable[[int], None] | None = None) -> TrainResult:
    """Train (or resume) as ``cfg`` says, validate each epoch, export the model to ``cfg.out``."""
    import torch
    from open_clip import ClipLoss

    dist = setup_distributed(cfg.device)
    _set_seed(cfg.seed)
    loaded = build_model(cfg, dist)
    data = prepare_data(cfg, loaded, dist)
    optimizer = make_optimizer(loaded.model, cfg)
    state = _start_state(cfg, loaded.model, optimizer, data["micro_per_epoch"])
    model = loaded.model
    if dist.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dist.local_rank] if dist.device.startswith("cuda") else None)
    loss_fn = ClipLoss(local_loss=True, gather_with_grad=True, cache_labels=True,
                       rank=dist.rank, world_size=dist.world)
    log = RunLog(cfg.state_dir, dist.main)
    log.write("start", state.step, world=dist.world, train_pairs=len(data["train"]),
              val_pairs=len(data["val"]), total_steps=state.total_steps, spec=loaded.spec)
    loop = _Loop(cfg, dist, loaded, model, optimizer, loss_fn, data, state, log)
    try:
        stopped = loop.run(on_epoch_end)
    finally:
        log.close()
    summary = loop.finish(stopped)
    return TrainResult(model=loaded.model, summary=summary)


class _Loop:
    """The epoch loop; split out so each piece stays short."""

    def __init__(self, cfg: TrainConfig, dist: Dist, loaded: LoadedClip, model: Any,
                 optimizer: Any, loss_fn: Any, data: dict[str, Any], state: RunState,
                 log: RunLog) -> None:
        self.cfg, self.dist, self.loaded, self.model = cfg, dist, loaded, model
        self.optimizer, self.loss_fn, self.data, self.state, self.log = (
            optimizer, loss_fn, data, state, log)
        self.started = time.monotonic()
        self.elapsed = 0.0  # seconds of this run, the same on every rank
        self.steps_this_run = 0
        self.samples_this_run = 0

    def _agreed_elapsed(self) -> float:
        """Seconds since this run started; under DDP the largest of all ranks (clocks differ,
        and a lone rank stopping or decaying differently would hang or drift)."""
        elapsed = time.monotonic() - self.started
        if self.dist.world == 1:
            return elapsed
        import torch
        import torch.distributed as tdist

        tensor = torch.tensor([elapsed], dtype=torch.float64, device=self.dist.device)
        tdist.all_reduce(tensor, op=tdist.ReduceOp.MAX)
        return float(tensor.item())

    def out_of_time(self) -> bool:
        """Step budget spent, or (with --max-minutes) time budget spent."""
        if self.state.step >= self.state.total_steps:
            return True
        if self.cfg.max_minutes is None:
            return False
        self.elapsed = self._agreed_elapsed()
        return self.elapsed >= self.cfg.max_minutes * 60

    def learning_rate(self) -> float:
        """Linear warmup, then cosine decay over the steps or, with --max-minutes, over
        whichever budget runs out first (so the decay ends on time at any speed)."""
        cfg, step = self.cfg, self.state.step
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        progress = (step - cfg.warmup) / max(self.state.total_steps - cfg.warmup, 1)
        if cfg.max_minutes:
            progress = max(progress, self.elapsed / (cfg.max_minutes * 60))
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))) * cfg.lr

    def run(self, on_epoch_end: Callable[[int], None] | None) -> bool:
        """Train epochs until done; returns True when stopped early (time / step limit)."""
        while self.state.epoch < self.cfg.epochs:
            if self.train_epoch():
                self.checkpoint()
                return self.state.epoch < self.cfg.epochs
            self.end_epoch()
            if on_epoch_end is not None:
                on_epoch_end(self.state.epoch)
        return False

    def train_epoch(self) -> bool:
        """Train the rest of the current epoch; True when a limit stopped it."""
        from tqdm import tqdm

        self.model.train()
        if self.cfg.lock_text:  # a frozen tower runs as at inference (no dropout), as in LiT
            unwrap(self.model).text.eval()
        micro_total = self.data["micro_per_epoch"]
        batches = epoch_batches(self.cfg, self.data, self.state.epoch,
                                self.state.batch_in_epoch, self.dist)
        bar = tqdm(total=micro_total // self.cfg.accum_steps,
                   initial=self.state.batch_in_epoch // self.cfg.accum_steps,
                   desc=f"epoch {self.state.epoch + 1}/{self.cfg.epochs}",
                   disable=not (self.dist.main and self.cfg.progress), dynamic_ncols=True)
        group: list[tuple[Any, Any]] = []
        for images, captions in batches:
            if self.out_of_time():
                bar.close()
                return True
            tokens = self.loaded.tokenizer(captions)
            group.append((images.to(self.dist.device, non_blocking=True),
                          tokens.to(self.dist.device)))
            if len(group) < self.cfg.accum_steps:
                continue
            loss = self.step(group)
            group = []
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
            if self.state.batch_in_epoch >= micro_total:
                break
        bar.close()
        return False

    def step(self, group: list[tuple[Any, Any]]) -> float:
        lr = self.learning_rate()
        for param_group in self.optimizer.param_groups:
            param_group["lr"] = lr
        loss = train_step(self.model, self.loss_fn, group, self.optimizer, self.dist.device)
        self.state.step += 1
        self.state.batch_in_epoch += len(group)
        self.steps_this_run += 1
        self.samples_this_run += sum(len(images) for images, _ in group) * self.dist.world
        if self.state.step % self.cfg.log_every == 0 or self.state.step == 1:
            elapsed = time.monotonic() - self.started
            self.log.write("train", self.state.step, epoch=self.state.epoch, loss=loss, lr=lr,
                           logit_scale=float(unwrap(self.model).logit_scale.detach().exp()),
                           samples_per_s=self.samples_this_run / max(elapsed, 1e-9))
        return loss

    def end_epoch(self) -> None:
        metrics = self.validate()
        self.state.history.append({"epoch": self.state.epoch + 1, "step": self.state.step,
                                   **metrics})
        self.log.write("epoch", self.state.step, epoch=self.state.epoch + 1, **metrics)
        self.state.epoch += 1
        self.state.batch_in_epoch = 0
        self.checkpoint()

    def validate(self) -> dict[str, float]:
        if not self.dist.main or not self.data["val"]:
            return {}
        from trainer.evaluate import embed_pairs, retrieval_metrics

        model = unwrap(self.model)
        model.eval()
        images, texts = embed_pairs(model, self.loaded, self.data["val"], self.dist.device,
                                    batch_size=self.cfg.batch_size, workers=self.cfg.workers)
        model.train()
        if self.cfg.lock_text:
            model.text.eval()
        return retrieval_metrics(images, texts)

    def checkpoint(self) -> None:
        if self.dist.main:
            save_checkpoint(self.cfg, self.model, self.optimizer, self.state)
        if self.dist.world > 1:
            import torch.distributed as tdist

            tdist.barrier()

    def finish(self, stopped: bool) -> dict[str, Any]:
        """Export the model (main process) and summarise the run."""
        elapsed = time.monotonic() - self.started
        summary = {
            "out": str(self.cfg.out), "spec": self.loaded.spec, "epochs_done": self.state.epoch,
            "steps": self.state.step, "stopped_early": stopped, "train_seconds": round(elapsed, 1),
            "samples_per_s": round(self.samples_this_run / max(elapsed, 1e-9), 2),
            "world_size": self.dist.world, "history": self.state.history,
        }
        if stopped and self.dist.main and self.data["val"]:
            summary["final_val"] = self.validate()
        if self.dist.main:
            from trainer.export import export_loaded

            export_loaded(self.loaded, self.cfg.out, meta={"training": summary,
                                                           "config": _config_dict(self.cfg)})
        if self.dist.world > 1:
            import torch.distributed as tdist

            tdist.barrier()
        return summary


# --------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``figsearch train``."""
    d = TrainConfig(out=Path("."))
    parser.add_argument("--config", default=None,
                        help="model config name (trainer/model_configs) or JSON path")
    parser.add_argument("--init", default=None,
                        help="start from this loadable model (hf-hub: id, model dir) to fine-tune")
    parser.add_argument("--out", required=True, help="model directory to write (hub format)")
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--batch-size", type=int, default=d.batch_size,
                        help="per-process micro-batch size")
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--wd", type=float, default=d.wd)
    parser.add_argument("--warmup", type=int, default=d.warmup, help="warmup optimizer steps")
    parser.add_argument("--accum-steps", type=int, default=d.accum_steps)
    parser.add_argument("--grad-checkpointing", action="store_true")
    parser.add_argument("--lock-image", action="store_true", help="LiT: freeze the image tower")
    parser.add_argument("--lock-text", action="store_true", help="freeze the text tower")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop (checkpoint + export) after this much training time")
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--wds", default=None, help="WebDataset shard glob or brace pattern")
    parser.add_argument("--resume", action="store_true", help="continue from <out>.train/")
    parser.add_argument("--workers", type=int, default=d.workers)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--device", default=None)


def command(args: argparse.Namespace) -> int:
    """Run training from CLI flags; print a one-line summary."""
    cfg = TrainConfig(
        out=Path(args.out), data_dir=args.settings.data_dir,
        config=args.config or (None if args.init else "figclip-mini"), init=args.init,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, wd=args.wd,
        warmup=args.warmup, accum_steps=args.accum_steps,
        grad_checkpointing=args.grad_checkpointing, lock_image=args.lock_image,
        lock_text=args.lock_text, max_minutes=args.max_minutes, max_steps=args.max_steps,
        wds=args.wds, resume=args.resume, workers=args.workers, seed=args.seed,
        device=args.device or args.settings.device or None,
    )
    try:
        result = train(cfg)
    except (TrainError, ModelLoadError) as exc:
        print(f"figsearch train: {exc}", file=sys.stderr)
        return 2
    s = result.summary
    last = (s.get("final_val") or (s["history"][-1] if s["history"] else {}))
    print(f"trained {s['steps']} steps / {s['epochs_done']} epochs in {s['train_seconds']} s "
          f"({s['samples_per_s']} pairs/s); val {json.dumps(last)}; model -> {s['out']}")
    return 0
