"""Each arm of an ablation at its own learning rate, chosen before its first seed trains.

    [params]
    "train.lr" = { per_arm = "lr-finder" }                                  # or:
    "train.lr" = { per_arm = "search", low = 1e-3, high = 0.1, log = true, trials = 6 }

lr-finder: the arm's own range test (its model and optimizer, lr_finder.* settings, training
split only, train.seed = the first reported seed); every seed then trains at its
recommendation. An arm the finder gives no recommendation is not run at all: the report lists
it with the finder's message (never another lr in its place). search: a small Optuna study per
arm (TPE, seeded; named "<ablation> [tune <arm>]" in the same storage), its trials trained at
the tuning seed (not a reported one) and scored on the validation split by the ablation's
objective; every seed then trains at the best trial's lr.

Each tuning run (the finder's, or each search trial) is an MLflow run under the ablation's
parent, tagged nin.role = "tuning" and nin.arm, never a cell. What was chosen is kept on the
Optuna study (user attr "nin_arm_lr:<arm>"), so a finished tuning step never reruns; a killed
one (nothing kept) does, and a killed search trial is failed by its heartbeat and retried. One
arm's range test runs on one machine at a time (the store's lock): its run, when a killed command
left it RUNNING, is failed by the next. The first choice kept for an arm stands.
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import mlflow
import optuna
from optuna.trial import TrialState

from nin_search.engine.config import apply, flatten
from nin_search.engine.train import resolve_device, resolved
from nin_search.search import optuna_private as private
from nin_search.search.interrupts import check_ctrl_c, deferred_ctrl_c, interruptible
from nin_search.search.objective import DataCache
from nin_search.spec.space import Param
from nin_search.spec.study import OBJECTIVES, Study, with_params
from nin_search.stores.locks import StoreLock
from nin_search.tracking.store import run_tags

STARTUP = 10  # TPE's random start-up trials (Optuna's default), queued up front by _queue_startup


KEY = "nin_arm_lr:"  # + arm: {"lr": float | None, "how": str, "message": str, "runs": [...]}


def records(attrs: dict) -> dict[str, dict]:
    """arm -> what its tuning chose, from the Optuna study's user attrs."""
    return {k[len(KEY) :]: v for k, v in attrs.items() if k.startswith(KEY)}


def arm_lrs(spec: dict, attrs: dict) -> dict[str, float]:
    """The train.lr each arm's cells train at: its tuned lr, else its own or the shared one."""
    tuned, out = records(attrs), {}
    for arm, overrides in spec["arms"].items():
        if spec.get("per_arm"):  # not tuned (yet), or no lr found: it trained at none
            out[arm] = tuned.get(arm, {}).get("lr") or float("nan")
        else:
            out[arm] = overrides.get("train.lr", spec["base"]["train.lr"])
    return out


def notes(spec: dict, attrs: dict) -> list[str]:
    """One line on how the arms' lrs were chosen, and one per arm left out for want of one."""
    lrs, tuned = arm_lrs(spec, attrs), records(attrs)
    if not spec.get("per_arm"):
        own = {a for a, o in spec["arms"].items() if "train.lr" in o}
        what = f"train.lr {spec['base']['train.lr']:.3g} for every arm"
        if own:
            what = "train.lr as each arm's table sets it, else the shared one"
        return [
            f'lr: {what} (no per-arm tuning: [params] "train.lr" = {{ per_arm = ... }}); a '
            "difference may reflect how well that lr suits each arm"
        ]
    out = [
        "lr per arm: "
        + "; ".join(
            f"{a} {lrs[a]:.3g} ({tuned[a]['how']})" if tuned.get(a, {}).get("lr") else f"{a} -"
            for a in spec["arms"]
        )
    ]
    for arm, rec in tuned.items():
        if rec.get("lr") is None:
            out.append(f"{arm}: not run: {rec['message']}")
    return out


def apply_records(study: Study, attrs: dict) -> Study:
    """The study with each arm's kept choice: its lr and how it was chosen, or why it is
    skipped (an arm not tuned yet, by a worker started before its tuning ended, is skipped by
    this process), and the cells that remain as its target. The study file's own is unchanged."""
    if not study.per_arm:
        return study
    tuned = records(attrs)
    arm_lr, lr_how, skipped = {}, {}, {}
    for arm in study.arms:
        rec = tuned.get(arm)
        if rec is None:
            skipped[arm] = "its lr is not tuned yet"
        elif rec.get("lr") is None:
            skipped[arm] = rec["message"]
        else:
            arm_lr[arm], lr_how[arm] = rec["lr"], rec["how"]
    chosen = dataclasses.replace(study, arm_lr=arm_lr, lr_how=lr_how, skipped=skipped)
    return dataclasses.replace(chosen, n_trials=len(chosen.cells()))


def tune_arms(study: Study, ostudy: optuna.Study, url: str, exp_id: str, parent: str) -> Study:
    """Tune every arm not tuned yet and keep each choice on the Optuna study; the study with
    the choices applied (apply_records)."""
    spec = study.per_arm.get("train.lr")
    if not spec:
        return study
    cache = DataCache()

    def kept() -> dict:
        return optuna.load_study(study_name=study.name, storage=private.storage(ostudy)).user_attrs

    for arm in study.arms:
        key = KEY + arm
        if key in ostudy.user_attrs:
            continue
        if spec["per_arm"] == "lr-finder":
            # one range test per arm at a time, on any machine: another command waits for it
            # and then uses its choice; a finder run left RUNNING by a killed one is failed
            lock = StoreLock(url, key=f"{study.name} [tune {arm}]", own_file=True)
            with lock:
                if key not in kept():
                    if lock.targets:  # held: no live range test of this arm anywhere
                        fail_killed_finders(study.name, arm, exp_id, parent)
                    ostudy.set_user_attr(key, _finder(study, arm, exp_id, parent, cache))
        else:
            rec = _search(study, arm, spec, url, exp_id, parent, cache)
            with StoreLock(url, key=study.name):  # the first kept choice stands
                if key not in kept():
                    ostudy.set_user_attr(key, rec)
        rec = kept()[key]
        shown = f"{rec['lr']:.3g}" if rec["lr"] is not None else f"none: {rec['message']}"
        print(f"arm {arm}: train.lr {shown} ({rec['how']})", flush=True)
    attrs = kept()
    log_choices(attrs, parent)  # also those kept by a command killed before it logged them
    return apply_records(study, attrs)


def log_choices(attrs: dict, parent: str) -> None:
    """Each kept choice on the parent run (param arms.<arm>.train.lr, tag nin.lr_how.<arm>),
    where it is not there yet."""
    client = mlflow.MlflowClient()
    data = client.get_run(parent).data
    for arm, rec in records(attrs).items():
        if f"arms.{arm}.train.lr" not in data.params:
            lr = rec["lr"]
            client.log_param(parent, f"arms.{arm}.train.lr", "none" if lr is None else lr)
        if f"nin.lr_how.{arm}" not in data.tags:
            client.set_tag(parent, f"nin.lr_how.{arm}", rec["how"][:5000])


def fail_killed_finders(name: str, arm: str, exp_id: str, parent: str) -> None:
    """The arm's finder runs still RUNNING: left by a killed command (under the arm's lock, no
    live one can be running), so they end FAILED instead of staying RUNNING for ever."""
    client = mlflow.MlflowClient()
    for run in client.search_runs(  # names may hold quotes: matched here, not in the filter
        [exp_id],
        "tags.`nin.role` = 'tuning' AND tags.`nin.command` = 'lr-finder' AND "
        "attributes.status = 'RUNNING'",
    ):
        tags = run.data.tags
        mine = (tags.get("nin.arm"), tags.get("nin.study"), tags.get("mlflow.parentRunId"))
        if mine == (arm, name, parent):
            client.set_terminated(run.info.run_id, "FAILED")


def _finder(study: Study, arm: str, exp_id: str, parent: str, cache: DataCache) -> dict:
    from nin_search.engine.lr_finder import find_lr
    from nin_search.tracking.finder import log_finding

    where = f"{study.path}: [arms.{arm}]"
    cfg = with_params(study, {"arm": arm, "train.seed": study.seeds[0]}, where)
    cfg = resolved(apply(cfg, {"lr_finder.use_val": False}, where))  # training split only
    c = cfg.lr_finder
    how = f"lr-finder, lr_finder.rule {c.rule!r} on the {c.smoothing} curve, training split"
    device = str(resolve_device(cfg.train.device))
    tags = run_tags(cfg, device) | {
        "mlflow.parentRunId": parent,
        "nin.role": "tuning",
        "nin.arm": arm,
        "nin.study": study.name,
        "nin.command": "lr-finder",
    }
    print(f"arm {arm}: lr-finder ({c.num_iter} steps, {c.repeats} repeat(s))", flush=True)
    with (
        deferred_ctrl_c(),
        mlflow.start_run(experiment_id=exp_id, run_name=f"{arm} lr-finder", tags=tags) as run,
    ):
        mlflow.log_params(flatten(cfg))
        with interruptible():  # a Ctrl-C stops the range test at once, not after every repeat
            finding = find_lr(cfg, cache.get(cfg))
        check_ctrl_c()
        with tempfile.TemporaryDirectory() as tmp:  # as the lr-finder command logs its run
            log_finding(finding, cfg, Path(tmp), f"LR range test: arm {arm}")
    lr = finding.recommended_lr if finding.status == "ok" else None
    message = "" if lr else f"the lr-finder gave no recommendation: {finding.message}"
    return {"lr": lr, "how": how, "message": message, "runs": [run.info.run_id]}


def tuning_study(study: Study, arm: str, spec: dict) -> Study:
    """The per-arm search as a study of its own: one train.lr range on the arm's settings."""
    return Study(
        f"{study.name} [tune {arm}]",
        study.path,
        spec["trials"],
        study.base | study.arms[arm] | {"train.seed": spec["seed"]},
        {"train.lr": Param("train.lr", "float", spec["low"], spec["high"], spec["log"])},
        {"type": "tpe", "seed": 0, "n_startup_trials": STARTUP},
        {"type": "none"},  # a few trials: pruning would judge them on too few peers
        study.objective,
        study.profile,
        keep_models="none",
    )


def _search(
    study: Study, arm: str, spec: dict, url: str, exp_id: str, parent: str, cache: DataCache
) -> dict:
    from nin_search.search.kinds import finished
    from nin_search.search.objective import make_objective
    from nin_search.search.studies import open_study
    from nin_search.search.workers import work

    tune = tuning_study(study, arm, spec)
    ostudy = open_study(tune, url)
    _queue_startup(tune, ostudy, url)
    tags = {"nin.role": "tuning", "nin.arm": arm}
    objective = make_objective(tune, url, exp_id, parent, None, cache, tags)

    def report(_s: optuna.Study, t) -> None:
        value = (
            f"{study.objective} {t.value:.4f}" if t.state == TrialState.COMPLETE else t.state.name
        )
        lr = t.params.get("train.lr", float("nan"))
        print(f"arm {arm}: tuning trial {t.number} train.lr {lr:.3g}: {value}", flush=True)

    print(
        f"arm {arm}: lr search, {finished(tune, ostudy)} of {tune.n_trials} trials finished "
        f"(train.seed {spec['seed']}, validation split)",
        flush=True,
    )
    # the sweep's own worker loop: stale trials failed and retried, never past the target,
    # shared safely by machines tuning the same arm
    work(tune, ostudy, objective, tune.n_trials, None, report, 3 * tune.n_trials)
    complete = ostudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    runs = [t.user_attrs.get("mlflow_run_id") for t in ostudy.get_trials(deepcopy=False)]
    scale = "log" if spec["log"] else "linear"
    how = (
        f"search: {finished(tune, ostudy)} TPE trials over "
        f"[{spec['low']:.3g}, {spec['high']:.3g}] "
        f"({scale}), train.seed {spec['seed']}, validation split"
    )
    if not complete:
        return {"lr": None, "how": how, "message": "no tuning trial completed", "runs": runs}
    _, direction, _ = OBJECTIVES[study.objective]
    pick = max if direction == "maximize" else min
    best = pick(complete, key=lambda t: t.value)
    how += f", best {study.objective} {best.value:.4f} (trial {best.number})"
    return {"lr": best.params["train.lr"], "how": how, "message": "", "runs": runs}


def _queue_startup(tune: Study, ostudy: optuna.Study, url: str) -> None:
    """Queue the lrs the seeded sampler draws in its random start-up trials that no trial of this
    search holds yet. Every arm then tries the same lrs (a paired comparison), and so does a
    search resumed after a kill: a fresh process's sampler would draw its first lrs again."""
    from nin_search.search.studies import make_sampler

    p = tune.params["train.lr"]
    dist = optuna.distributions.FloatDistribution(float(p.low), float(p.high), log=p.log)
    probe = optuna.create_study(sampler=make_sampler(tune))  # in memory, the same draws
    lrs = []
    for _ in range(min(tune.n_trials, STARTUP)):
        trial = probe.ask({"train.lr": dist})
        lrs.append(trial.params["train.lr"])
        probe.tell(trial, 0.0)  # start-up draws are random: the value does not steer them
    with StoreLock(url, key=tune.name):  # machines tuning this arm at once queue each lr once
        held = {
            t.params.get("train.lr", t.system_attrs.get("fixed_params", {}).get("train.lr"))
            for t in ostudy.get_trials(deepcopy=False)
        }
        for lr in lrs:
            if lr not in held:
                ostudy.enqueue_trial({"train.lr": lr})
