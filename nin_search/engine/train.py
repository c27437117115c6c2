"""The training engine: fit(cfg, data, on_epoch) trains one NiN and returns its history.

    cfg = load_config(profile="quick")
    data = load_data(cfg.data, resolve_device(cfg.train.device))
    result = fit(cfg, data, on_epoch=lambda m: print(m["epoch"], m["val_acc"]))

One visible loop, no callbacks beyond `on_epoch(metrics) -> str | None`: return a reason to stop
the run early (a pruned trial), or None to go on. A non-finite loss stops the run with status
"diverged" and the epoch and step where it happened; so does a collapse (collapsed()): the val
accuracy falls to chance, with a finite loss, after the run had learned; and an explosion
(exploded()): an epoch's mean train loss above EXPLODED x ln(classes). Imports only torch (and
tqdm if installed).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from nin_search.engine import snapshot as snapshots
from nin_search.engine.chance import EXPLODED, at_chance, collapsed, exploded, explosion_limit
from nin_search.engine.config import Config, ConfigError, TrainConfig, finder_rule
from nin_search.engine.cpu_memory import keep_cpu_memory, release_cpu_memory
from nin_search.engine.data import Data, batches, train_images
from nin_search.engine.model import build_model

try:  # a progress bar where tqdm is installed; the engine itself needs torch alone
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover - bare GPU machines
    tqdm = None


EVAL_BATCH = {"cpu": 128, "cuda": 1024}  # images per evaluation batch (CPU: cache-sized)


CUDA_CHECK_EVERY = 50  # steps between non-finite checks on CUDA (a host sync each)


@dataclass
class FitResult:
    status: str  # "completed" | "diverged" | "stopped" (on_epoch asked to stop)
    history: list[dict] = field(default_factory=list)  # one dict of metrics per epoch
    reason: str = ""  # why it diverged or stopped
    diverged_at: tuple[int, int] | None = None  # (epoch, step within the epoch), 1-based
    model: nn.Module | None = None
    device: str = "cpu"
    precision: str = "fp32"  # the resolved train.precision it trained at
    num_classes: int = 10
    val_images: int = 0
    train_images: int = 0  # per epoch

    @property
    def best_val_acc(self) -> float:
        return max((h["val_acc"] for h in self.history), default=float("nan"))

    def diverge(self, epoch: int, step: int, lr: float, which: str = "") -> None:
        self.status, self.diverged_at = "diverged", (epoch, step)
        self.reason = (
            f"loss became non-finite at epoch {epoch}, step {step} ({which}lr {lr:.3g}); "
            "lower train.lr"
        )

    def collapse(self, lr: float, steps: int) -> None:
        last = self.history[-1]
        epoch, best = last["epoch"], max(self.history, key=lambda h: h["val_acc"])
        self.status, self.diverged_at = "diverged", (epoch, steps)
        self.reason = (
            f"collapsed at epoch {epoch} (its lr up to {lr:.3g}): val accuracy fell to chance, "
            f"{last['val_acc']:.4f} for {self.num_classes} classes, after {best['val_acc']:.4f} "
            f"at epoch {best['epoch']}; the loss stayed finite (val loss {last['val_loss']:.4g}; "
            f"a constant guess scores ln {self.num_classes} = {math.log(self.num_classes):.3f}); "
            "lower train.lr"
        )

    def explode(self, lr: float, steps: int) -> None:
        last, first, k = self.history[-1], self.history[0], self.num_classes
        self.status, self.diverged_at = "diverged", (last["epoch"], steps)
        rose = f", from {first['train_loss']:.4g} at epoch 1" if len(self.history) > 1 else ""
        self.reason = (
            f"exploded at epoch {last['epoch']} (its lr up to {lr:.3g}): the mean train loss "
            f"reached {last['train_loss']:.4g}{rose}, above {EXPLODED:g} x ln {k} = "
            f"{explosion_limit(k):.4g} (ln {k}: a constant guess's loss); lower train.lr"
        )

    @property
    def at_chance(self) -> bool:
        """The last epoch's val accuracy is at chance (AT_CHANCE): the run learned nothing."""
        return bool(self.history) and at_chance(
            self.history[-1]["val_acc"], self.val_images, self.num_classes
        )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device = 'cuda': no CUDA device is available here; use 'auto'")
    return torch.device(name)


def cpu_bf16_units() -> list[str]:
    """The CPU's native bf16 matrix units as torch sees them: AMX and/or AVX512-BF16.

    oneDNN runs bf16 convolutions on these faster than fp32 (docs/results/throughput.md);
    without them bf16 is emulated and slower than fp32. A seam: tests replace it."""
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return [name for name in ("amx_bf16", "avx512_bf16") if caps.get(name)]


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"this CPU ({torch.backends.cpu.get_cpu_capability()}, no AMX or AVX512-BF16)"


def resolve_precision(name: str, device: torch.device) -> str:
    """train.precision -> 'bf16' or 'fp32' for this device.

    auto: bf16 autocast on CUDA and on CPUs with native bf16 units, fp32 elsewhere. Weights,
    optimizer state and the loss stay fp32 either way; only the convolutions' inputs and
    outputs are bf16. bf16 asked for on a device without bf16 units is a ConfigError."""
    if name == "fp32":
        return "fp32"
    has = torch.cuda.is_bf16_supported() if device.type == "cuda" else bool(cpu_bf16_units())
    if name == "bf16" and not has:
        raise ConfigError(
            f"train.precision = 'bf16': {_device_name(device)} has no bf16 units; "
            "use 'auto' or 'fp32'"
        )
    return "bf16" if has else "fp32"


def resolved(cfg: Config, device: torch.device | None = None) -> Config:
    """cfg with train.precision resolved for its device and lr_finder.rule for its schedule:
    what runs is what gets logged."""
    device = device or resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    return dataclasses.replace(
        cfg,
        train=dataclasses.replace(cfg.train, precision=precision),
        lr_finder=dataclasses.replace(cfg.lr_finder, rule=finder_rule(cfg)),
    )


def autocast(device: torch.device, precision: str):
    """bf16 autocast when precision is 'bf16' (no loss scaling needed), a no-op for 'fp32'."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def make_optimizer(t: TrainConfig, params) -> torch.optim.Optimizer:
    if t.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=t.lr, momentum=t.momentum, nesterov=t.nesterov, weight_decay=t.weight_decay
        )
    cls = torch.optim.Adam if t.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=t.lr, weight_decay=t.weight_decay)


def make_schedule(t: TrainConfig, opt: torch.optim.Optimizer, steps_per_epoch: int):
    """A per-step LR schedule from torch.optim.lr_scheduler, with linear warmup from lr / 100."""
    sched = torch.optim.lr_scheduler
    total = t.epochs * steps_per_epoch
    warm = min(round(t.warmup_epochs * steps_per_epoch), total - 1)
    if t.schedule == "onecycle":  # its own warmup: pct_start of the steps (0.3 unless set)
        # one spare step: fit() steps the schedule after the last batch too, and OneCycleLR
        # extrapolates past its end (pytorch#91765)
        return sched.OneCycleLR(
            opt,
            max_lr=t.lr,
            total_steps=total + 1,
            cycle_momentum=False,
            pct_start=warm / (total + 1) if warm else 0.3,
        )
    main = {
        "constant": lambda: sched.LambdaLR(opt, lambda step: 1.0),
        "cosine": lambda: sched.CosineAnnealingLR(opt, T_max=max(1, total - warm)),
        "step": lambda: sched.StepLR(opt, step_size=t.step_size * steps_per_epoch, gamma=t.gamma),
    }[t.schedule]()
    if not warm:
        return main
    ramp = sched.LinearLR(opt, start_factor=0.01, total_iters=warm)
    return sched.SequentialLR(opt, [ramp, main], milestones=[warm])


@torch.no_grad()
def predict(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, data: Data, precision: str = "fp32"
) -> tuple[float, float, torch.Tensor]:
    """(mean loss, accuracy, predicted classes on x's device) over (x, y) at the given resolved
    precision; one host sync."""
    model.eval()
    loss = torch.zeros((), device=x.device)
    preds = []
    for xb, yb in batches(x, y, EVAL_BATCH.get(x.device.type, 1024), data.cfg):
        with autocast(x.device, precision):
            logits = model(xb).float()
        loss += nn.functional.cross_entropy(logits, yb, reduction="sum")
        preds.append(logits.argmax(1))
    pred = torch.cat(preds)
    return loss.item() / len(x), (pred == y).sum().item() / len(x), pred


def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, data: Data, precision: str = "fp32"
) -> tuple[float, float]:
    """(mean loss, accuracy) over (x, y): predict's, without the predictions."""
    loss, acc, _ = predict(model, x, y, data, precision)
    return loss, acc


def train_step(model, opt, criterion, xb, yb, device: torch.device, precision: str = "fp32"):
    """One optimizer step on a batch: forward (in bf16 autocast when precision is 'bf16'), loss
    in fp32, backward, step. Returns the logits and the loss, still on the device (no sync)."""
    with autocast(device, precision):
        logits = model(xb)
    loss = criterion(logits.float(), yb)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return logits, loss


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seeded_start(cfg: Config, data: Data, seed: int | None = None):
    """The seeded generator, model and optimizer of a run's first step (fit's, and each of the
    lr-finder's range tests); seed defaults to train.seed."""
    t, device = cfg.train, data.train_x.device
    seed = t.seed if seed is None else seed
    torch.manual_seed(seed)  # weight init and dropout
    gen = torch.Generator(device=device).manual_seed(seed)  # batch order and augmentation
    # channels_last on both devices: cuDNN's and oneDNN's fastest convolutions for this network
    # (less time per step than NCHW on the CPU too: docs/results/memory.md)
    model = build_model(cfg.model, data.input_size, 1, data.num_classes)
    model = model.to(device, memory_format=torch.channels_last)
    return gen, model, make_optimizer(t, model.parameters())


def fit(
    cfg: Config,
    data: Data,
    on_epoch: Callable[[dict], str | None] | None = None,
    progress: bool = False,
    snapshot: Path | None = None,
) -> FitResult:
    """Train cfg's model on data.train_*, validate on data.val_* every epoch. With `snapshot`
    (snapshot.py), save the state after every epoch there and, when it holds a snapshot of this
    very config, go on from it: its epochs are replayed to on_epoch (marked "resumed": True)."""
    t = cfg.train
    device = data.train_x.device
    cuda = device.type == "cuda"
    precision = resolve_precision(t.precision, device)
    if device.type == "cpu":
        keep_cpu_memory()  # reuse the step's large buffers (cpu_memory.py)
    images = train_images(len(data.train_x), t.batch_size)  # a lone last image is dropped
    steps = math.ceil(images / t.batch_size)
    gen, model, opt = seeded_start(cfg, data)
    sched = make_schedule(t, opt, steps)
    done = snapshots.resume(snapshot, cfg, model, opt, sched, gen) if snapshot else []
    if done is None:  # restoring failed part-way: begin again from freshly seeded objects
        gen, model, opt = seeded_start(cfg, data)
        sched = make_schedule(t, opt, steps)
        done = []
    if cuda:
        torch.backends.cudnn.benchmark = True
    step_model = torch.compile(model) if (t.compile and cuda) else model
    criterion = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)
    check_every = CUDA_CHECK_EVERY if cuda else 1  # on the CPU a check costs nothing
    result = FitResult(
        "completed",
        model=model,
        device=str(device),
        precision=precision,
        num_classes=data.num_classes,
        val_images=len(data.val_x),
        train_images=images,
    )
    for m in done:  # a killed run of this config got this far: these epochs are not trained again
        result.history.append(m)
        stop = on_epoch(m | {"resumed": True}) if on_epoch else None
        if stop:
            result.status, result.reason = "stopped", stop
            break
    first = len(result.history) + 1 if result.status == "completed" else t.epochs + 1

    for epoch in range(first, t.epochs + 1):
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        model.train()
        losses = torch.zeros(steps, device=device)  # per-step losses, read once per epoch
        correct = torch.zeros((), device=device, dtype=torch.long)
        bar = (
            tqdm(total=steps, desc=f"epoch {epoch}/{t.epochs}", leave=False, unit="step")
            if progress and tqdm
            else None
        )
        _sync(device)
        start = time.perf_counter()
        checked = 0  # steps already known to be finite
        peak_lr = 0.0  # the highest lr of the epoch, for a collapse's reason
        for i, (xb, yb) in enumerate(
            batches(
                data.train_x,
                data.train_y,
                t.batch_size,
                data.cfg,
                gen,
                train=True,
            )
        ):
            peak_lr = max(peak_lr, opt.param_groups[0]["lr"])
            logits, loss = train_step(step_model, opt, criterion, xb, yb, device, precision)
            sched.step()
            losses[i] = loss.detach()
            correct += (logits.argmax(1) == yb).sum()
            if bar is not None:
                bar.update()
            if (i + 1) % check_every == 0 or i + 1 == steps:  # a host sync on CUDA
                bad = ~torch.isfinite(losses[checked : i + 1])
                checked = i + 1
                if bad.any():
                    step = checked - len(bad) + int(bad.nonzero()[0]) + 1
                    result.diverge(epoch, step, opt.param_groups[0]["lr"])
                    break
        if bar is not None:
            bar.close()
        if result.status == "diverged":
            break
        _sync(device)
        train_time = time.perf_counter() - start
        val_loss, val_acc = evaluate(step_model, data.val_x, data.val_y, data, precision)
        if not math.isfinite(val_loss):  # the epoch's last update overflowed the weights
            lr = opt.param_groups[0]["lr"]
            result.diverge(epoch, steps, lr, "the validation loss after its update; ")
            break
        metrics = {
            "epoch": epoch,
            "train_loss": losses.mean().item(),
            "train_acc": correct.item() / images,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr": opt.param_groups[0]["lr"],
            "img_per_s": images / train_time,
            "epoch_time_s": time.perf_counter() - start,
        }
        if cuda:
            metrics["peak_mem_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        result.history.append(metrics)
        stop = on_epoch(metrics) if on_epoch else None
        if exploded(result.history, data.num_classes):  # finite, but no longer training
            result.explode(peak_lr, steps)
            break
        if collapsed(result.history, len(data.val_x), data.num_classes):
            result.collapse(peak_lr, steps)
            break
        if stop:
            result.status, result.reason = "stopped", stop
            break
        if snapshot:  # after on_epoch logged the epoch: a resumed run replays what was logged
            if not snapshots.save(snapshot, cfg, epoch, result.history, model, opt, sched, gen):
                snapshot = None  # it said why, once
    release_cpu_memory()
    return result
