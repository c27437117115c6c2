"""Why does a run end at chance with a finite loss? Step-by-step probe of one `cpu`-profile run.

lr_finder_regret.py found plain SGD on the fully connected head (`model.head = fc`, width 0.25)
ending at 10 % val accuracy, status "completed", from lr ~1 up: no NaN, so fit() never called
it diverged. This trains the same config with fit()'s own pieces (seeded_start, train_step, the
onecycle schedule) and prints, every `--every` steps, the lr, the batch loss, the share of
zeros in the fc layer's input (ReLU outputs), the fc weights' norm and the logits' spread.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/collapse_probe.py --lr 1.1183 --seed 0 \
        --set model.head=fc --set model.width=0.25 --set train.optimizer=sgd --steps 900
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn

from nin_search.engine.config import load_config
from nin_search.engine.data import batches, load_data, train_images
from nin_search.engine.train import evaluate, make_schedule, seeded_start, train_step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lr", type=float, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], dest="sets")
    ap.add_argument("--steps", type=int, default=900)
    ap.add_argument("--every", type=int, default=10)
    a = ap.parse_args()
    cfg = load_config(
        profile="cpu", overrides=[*a.sets, f"train.lr={a.lr}", f"train.seed={a.seed}"]
    )
    data = load_data(cfg.data, "cpu", with_test=False)
    t = cfg.train
    steps = math.ceil(train_images(len(data.train_x), t.batch_size) / t.batch_size)
    gen, model, opt = seeded_start(cfg, data)
    sched = make_schedule(cfg.train, opt, steps)
    head = model.fc if hasattr(model, "fc") else None
    seen: dict[str, torch.Tensor] = {}
    if head is not None:
        head.register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0].detach()))
    criterion = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)
    model.train()
    print("step epoch lr loss acc fc_in_zero fc_w_norm logit_sd", flush=True)
    n = 0
    for epoch in range(1, t.epochs + 1):
        for xb, yb in batches(data.train_x, data.train_y, t.batch_size, data.cfg, gen, train=True):
            lr = opt.param_groups[0]["lr"]
            logits, loss = train_step(model, opt, criterion, xb, yb, data.train_x.device)
            sched.step()
            n += 1
            if n % a.every == 0 or not math.isfinite(loss.item()):
                zero = float((seen["x"] == 0).float().mean()) if "x" in seen else float("nan")
                wn = float(head.weight.detach().norm()) if head is not None else float("nan")
                acc = float((logits.argmax(1) == yb).float().mean())
                print(
                    f"{n} {epoch} {lr:.4g} {loss.item():.4f} {acc:.3f} {zero:.4f} {wn:.3g} "
                    f"{float(logits.float().std(0).mean()):.4g}",
                    flush=True,
                )
            if n >= a.steps:
                return
        epoch_end(model, data, epoch)


def epoch_end(model: nn.Module, data, epoch: int) -> None:
    """Val accuracy in eval mode (running BatchNorm statistics, as fit() measures it) and in
    train mode (each batch's own statistics, no update), and the BatchNorm running variances."""
    _, acc_eval = evaluate(model, data.val_x, data.val_y, data)
    state = {k: v.clone() for k, v in model.state_dict().items()}  # train mode updates BN stats
    model.train()
    correct = 0
    with torch.no_grad():
        for xb, yb in batches(data.val_x, data.val_y, 128, data.cfg):
            correct += int((model(xb).argmax(1) == yb).sum())
    acc_train = correct / len(data.val_x)
    model.load_state_dict(state)
    model.train()
    bns = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    rv = " ".join(
        f"{n}:{float(m.running_var.max()):.3g}/{float(m.running_mean.abs().max()):.3g}"
        for n, m in bns
    )
    print(
        f"epoch {epoch} end: val_acc eval-mode {acc_eval:.4f} train-mode {acc_train:.4f}; "
        f"BN running var max / |mean| max: {rv}",
        flush=True,
    )


if __name__ == "__main__":
    main()
