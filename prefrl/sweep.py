"""`prefrl ablate`: grids of variants x label budgets x seeds x envs; every cell is an ordinary run folder.

A cell's folder has a fixed name, `<out>/<env>/runs/<variant>__labels<N>__seed<S>`, so running the same
command again finds it: finished runs (summary.json) are skipped, stopped ones continue from their latest
checkpoint (prefrl.loop.resume), missing ones start. A folder made with other settings is refused, never
reused or overwritten.

Runs go to a local process pool by default (one torch thread per run, a fresh process per run as in
prefrl.bench, so one run's memory or state never leaks into the next). `--ray ADDRESS` (or `auto`, or
`local` for a throwaway instance on this machine) sends the same runs to a Ray cluster as one-CPU tasks,
each in a fresh worker process; the nodes need prefrl installed (`pip install -e .[ray]`) and must see the
output folder at the same path (a shared file system).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Optional, Sequence

from prefrl.config import TEACHERS, VARIANT_GROUPS, VARIANTS, ConfigError, TrainConfig, variant_names

RUN_DIRS = "runs"
"""Run folders of a grid live in <out>/<env>/runs/; plots and the invocation log sit beside them."""
IGNORED = ("run_dir", "results_dir", "progress_bar")
"""Settings that may differ between a grid's command and an existing run folder (paths, display)."""


class SweepError(ValueError):
    """A grid that cannot run as asked; the message is one line with the fix."""


@dataclass(frozen=True)
class Job:
    """One cell of the grid."""

    env: str
    variant: str
    labels: int
    seed: int
    cfg: TrainConfig

    @property
    def run_dir(self) -> Path:
        assert self.cfg.run_dir is not None
        return self.cfg.run_dir


def env_folder(env_id: str) -> str:
    """`prefrl/MiniPong-v0` -> `MiniPong-v0`: the grid folder of an env."""
    return env_id.split("/")[-1]


def run_folder_name(variant: str, labels: int, seed: int) -> str:
    return f"{variant}__labels{labels}__seed{seed}"


def grid_dir(out: Path, env_id: str) -> Path:
    return out / env_folder(env_id)


def train_config(env_id: str, labels: Optional[int] = None, steps: Optional[int] = None,
                 train_flags: Sequence[str] = ()) -> TrainConfig:
    """What `prefrl train --env ENV [--total-labels N] [--total-timesteps S] FLAGS` would run, so the env
    family's presets (Atari, MuJoCo) and their label arithmetic apply exactly as for a single run."""
    from prefrl.cli import parse_train_config

    return parse_train_config(["--env", env_id, *(["--total-labels", str(labels)] if labels else []),
                               *(["--total-timesteps", str(steps)] if steps else []), *train_flags])


def build_grid(envs: Sequence[str], variants: Sequence[str], seeds: Sequence[int], out: Path,
               labels: Optional[Sequence[int]] = None, steps: Optional[int] = None,
               train_flags: Sequence[str] = ()) -> list[Job]:
    """Every (env, variant, labels, seed) cell, seeds outermost so a grid stopped early has all variants
    for its first seeds. The variant preset is applied last, on the train flags' config, so variants
    differ from each other exactly in the fields their presets name."""
    jobs = []
    out = out.resolve()  # config.json records absolute paths; Ray workers may start in another folder
    for env_id in envs:
        runs = grid_dir(out, env_id) / RUN_DIRS
        bases = {n: train_config(env_id, n, steps, train_flags) for n in (labels or [None])}
        for seed in seeds:
            for base in bases.values():
                n_labels = base.feedback.total_labels
                for variant in variants:
                    cfg = replace(base, seed=seed, exp_name=variant, progress_bar=False, results_dir=runs,
                                  run_dir=runs / run_folder_name(variant, n_labels, seed))
                    jobs.append(Job(env_id, variant, n_labels, seed, VARIANTS[variant](cfg).validate()))
    return jobs


def _flat(cfg: TrainConfig) -> dict[str, object]:
    out: dict[str, object] = {}

    def walk(d: dict, prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            elif k not in IGNORED:
                out[prefix + k] = v

    walk(json.loads(cfg.to_json()), "")
    return out


def config_differences(have: TrainConfig, want: TrainConfig) -> list[str]:
    """'field: theirs -> ours' for every setting that differs (paths and display settings aside)."""
    a, b = _flat(have), _flat(want)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def job_status(job: Job) -> str:
    """`done` (summary.json), `resume` (a run folder without summary) or `new`; SweepError if the folder
    holds something else or was made with other settings."""
    d = job.run_dir
    if not d.exists() or (d.is_dir() and not any(d.iterdir())):
        return "new"
    path = d / "config.json"
    if not path.exists():
        raise SweepError(f"{d} exists but is not a run folder (no config.json); move it away and rerun")
    diff = config_differences(TrainConfig.from_json(path.read_text(), source=str(path)), job.cfg)
    if diff:
        raise SweepError(f"{d} was made with other settings ({'; '.join(diff[:3])}"
                         f"{'; ...' if len(diff) > 3 else ''}); rerun with the same flags or pass another --out")
    return "done" if (d / "summary.json").exists() else "resume"


def run_job(config_json: str) -> dict:
    """One cell, in a worker process (pool or Ray): start it, or continue it from its checkpoint.
    Returns a plain dict (never raises), so one failed run does not stop the grid."""
    import torch

    torch.set_num_threads(1)
    cfg = TrainConfig.from_json(config_json)
    run_dir = cfg.run_dir
    assert run_dir is not None
    out = dict(run_dir=str(run_dir), variant=cfg.exp_name, seed=cfg.seed, labels=cfg.feedback.total_labels,
               env=cfg.env.env)
    try:
        from prefrl.loop import resume, train

        if (run_dir / "config.json").exists():
            how, r = "resumed", resume(run_dir, progress_bar=False)
        else:
            if run_dir.exists():
                run_dir.rmdir()  # an empty folder left by a kill between mkdir and config.json
            how, r = "started", train(cfg)
        return dict(out, status=how, true_return=r.true_return, steps=r.steps, wall_seconds=round(r.wall_seconds, 1),
                    labels_used=r.labels)
    except Exception as exc:  # noqa: BLE001 - reported per run; the grid goes on
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return dict(out, status="failed", error=f"{type(exc).__name__}: {msg}")


def run_local(jobs: list[Job], workers: int) -> Iterator[dict]:
    """Each job in a fresh process of a pool of `workers` (max_tasks_per_child=1), as they finish."""
    with ProcessPoolExecutor(max_workers=workers, max_tasks_per_child=1) as pool:
        futures = {pool.submit(run_job, j.cfg.to_json()): j for j in jobs}
        try:
            for fut in as_completed(futures):
                try:
                    yield fut.result()
                except Exception as exc:  # noqa: BLE001 - e.g. a worker killed by the OOM killer
                    j = futures[fut]
                    yield dict(run_dir=str(j.run_dir), variant=j.variant, seed=j.seed, labels=j.labels, env=j.env,
                               status="failed", error=f"worker died: {type(exc).__name__}: {exc}".splitlines()[0])
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def run_ray(jobs: list[Job], address: str, workers: int) -> Iterator[dict]:
    """Each job as a one-CPU Ray task in a fresh worker process (max_calls=1). `local` starts a private
    instance with `workers` CPUs and stops it at the end; `auto` or an address joins a running cluster."""
    try:
        import ray
    except ImportError:
        raise SweepError("--ray needs the optional ray extra; install it with: pip install -e .[ray]") from None
    import logging

    opts = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        if address == "local":
            ray.init(num_cpus=workers, **opts)
        else:
            ray.init(address=address, **opts)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise SweepError(f"cannot reach Ray at '{address}' ({str(exc).splitlines()[0] if str(exc) else exc}); "
                         "start one with `ray start --head` or use --ray local") from None
    task = ray.remote(num_cpus=1, max_calls=1)(run_job)
    pending = {task.remote(j.cfg.to_json()): j for j in jobs}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            j = pending.pop(done[0])
            try:
                yield ray.get(done[0])
            except Exception as exc:  # noqa: BLE001 - a worker that died
                yield dict(run_dir=str(j.run_dir), variant=j.variant, seed=j.seed, labels=j.labels, env=j.env,
                           status="failed", error=f"ray task failed: {str(exc).splitlines()[0]}")
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        ray.shutdown()


def _machine() -> str:
    return f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, Python {platform.python_version()}"


def _parser() -> argparse.ArgumentParser:
    variants = "\n".join(f"  {n:<18} {(f.__doc__ or '').strip().splitlines()[0]}" for n, f in VARIANTS.items()
                         if n not in TEACHERS)
    ap = argparse.ArgumentParser(
        prog="prefrl ablate", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run an ablation grid (variants x label budgets x seeds x envs), each run an ordinary run\n"
                    "folder OUT/<env>/runs/<variant>__labels<N>__seed<S>. Rerunning the same command skips\n"
                    "finished runs and resumes stopped ones.",
        epilog=f"variants (--variants paper = {','.join(VARIANT_GROUPS['paper'])}):\n{variants}\n"
               f"  --variants teachers = {','.join(TEACHERS)} (B-Pref synthetic teachers)\n\n"
               "Flags after `--` are prefrl train flags applied to every run, e.g.\n"
               "  prefrl ablate --env prefrl/MiniPong-v0 --variants paper --seeds 5 --workers 2 -- --n-envs 8\n"
               "Afterwards the grid is plotted into OUT/<env>/ (prefrl plot OUT/<env> does it again).")
    ap.add_argument("--env", required=True, help="gymnasium id, or a comma list of ids (one grid folder each)")
    ap.add_argument("--variants", default="paper", help="paper, teachers, or a comma list of variant names")
    ap.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 per cell (default 5)")
    ap.add_argument("--labels", help="comma list of label budgets, e.g. 50,100,200 (default: the train flags' "
                                     "--total-labels)")
    ap.add_argument("--steps", type=int, help="PPO steps per run (default: the train flags' --total-timesteps)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="parallel runs on this machine (one core each; default: all cores)")
    ap.add_argument("--ray", metavar="ADDRESS", help="run on Ray instead: a cluster address, `auto` (the running "
                                                     "cluster) or `local` (a private instance with --workers CPUs)")
    ap.add_argument("--out", type=Path, default=Path("results/ablations"), help="grid root (default results/ablations)")
    ap.add_argument("--no-plot", action="store_true", help="skip the plots at the end")
    ap.add_argument("--dry-run", action="store_true", help="list the runs and their state, run nothing")
    return ap


def _parse_labels(text: Optional[str]) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SweepError(f"--labels takes a comma list of whole numbers, e.g. 50,100,200 (got {text!r})") from None
    if not values or min(values) < 1:
        raise SweepError(f"--labels needs label budgets >= 1, e.g. 50,100,200 (got {text!r})")
    return list(dict.fromkeys(values))


GRID_FLAGS = {"--env": "prefrl ablate --env", "--seed": "prefrl ablate --seeds", "--exp-name": "the variant names",
              "--run-dir": "prefrl ablate --out", "--results-dir": "prefrl ablate --out",
              "--resume": "the same prefrl ablate command (it resumes stopped runs)"}


def _check_flags(train_flags: Sequence[str], labels: Optional[list[int]], steps: Optional[int]) -> None:
    """Settings the grid owns must not come in through the train flags, where they would be overridden."""
    given = {f.split("=", 1)[0].replace("_", "-") for f in train_flags if f.startswith("--")}
    owned = dict(GRID_FLAGS)
    if labels is not None:
        owned["--total-labels"] = "prefrl ablate --labels alone"
    if steps is not None:
        owned["--total-timesteps"] = "prefrl ablate --steps alone"
    for flag, use in owned.items():
        if flag in given:
            raise SweepError(f"{flag} after `--` is set by the grid; use {use} instead")


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args = _parser().parse_args(argv[:cut])
    train_flags = argv[cut + 1:]
    if args.seeds < 1:
        raise SweepError(f"--seeds must be >= 1 (got {args.seeds})")
    if args.workers < 1:
        raise SweepError(f"--workers must be >= 1 (got {args.workers})")
    if args.steps is not None and args.steps < 1:
        raise SweepError(f"--steps must be >= 1 (got {args.steps})")
    envs = [e.strip() for e in args.env.split(",") if e.strip()]
    if not envs:
        raise SweepError("--env needs at least one gymnasium id, e.g. --env Pendulum-v1")
    variants = variant_names(args.variants)
    labels = _parse_labels(args.labels)

    _check_flags(train_flags, labels, args.steps)
    jobs = build_grid(envs, variants, list(range(args.seeds)), args.out, labels, args.steps, train_flags)
    from prefrl.loop import check_run_config  # torch and SB3: after the cheap checks

    checked: set[str] = set()
    for j in jobs:  # unknown env, clip longer than an episode, ...: fail before any run starts
        key = json.dumps({k: v for k, v in _flat(j.cfg).items() if k != "seed"}, sort_keys=True)
        if key not in checked:
            check_run_config(j.cfg)
            checked.add(key)
    status = {j: job_status(j) for j in jobs}
    todo = [j for j in jobs if status[j] != "done"]
    counts = {s: sum(v == s for v in status.values()) for s in ("done", "resume", "new")}
    where = f"Ray ({args.ray})" if args.ray else f"{args.workers} local worker(s)"
    print(f"grid: {len(envs)} env(s) x {len(variants)} variant(s) x {len(labels or [0])} label budget(s) x "
          f"{args.seeds} seed(s) = {len(jobs)} runs; {counts['done']} finished (skipped), {counts['resume']} to "
          f"resume, {counts['new']} to start; on {where}", flush=True)
    if args.dry_run:
        for j in jobs:
            print(f"  {status[j]:<6} {j.run_dir}")
        return 0

    t0 = time.monotonic()
    load_start = os.getloadavg()
    rows = []
    runner = run_ray(todo, args.ray, args.workers) if args.ray else run_local(todo, min(args.workers, len(todo) or 1))
    try:
        for row in runner:
            rows.append(row)
            j = f"{env_folder(row['env'])} {row['variant']} labels{row['labels']} seed{row['seed']}"
            if row["status"] == "failed":
                print(f"[{len(rows)}/{len(todo)}] {j}: FAILED: {row['error']}", flush=True)
            else:
                print(f"[{len(rows)}/{len(todo)}] {j}: {row['status']}, true return {row['true_return']:.1f}, "
                      f"{row['wall_seconds']:.0f} s", flush=True)
    except KeyboardInterrupt:
        runner.close()  # cancels what has not started; a local Ray instance is shut down
        print("\nprefrl ablate: interrupted; run the same command again to resume the grid", file=sys.stderr)
        return 130
    wall = time.monotonic() - t0
    failed = [r for r in rows if r["status"] == "failed"]
    for env_id in envs:
        g = grid_dir(args.out, env_id)
        g.mkdir(parents=True, exist_ok=True)
        record = dict(command=shlex.join(["prefrl", "ablate", *argv]),
                      date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), machine=_machine(), runner=where, wall_seconds=round(wall, 1),
                      load_start=[round(x, 2) for x in load_start], load_end=[round(x, 2) for x in os.getloadavg()],
                      runs=len([j for j in jobs if j.env == env_id]),
                      skipped=len([j for j in jobs if j.env == env_id and status[j] == "done"]),
                      ran=[{k: v for k, v in r.items() if k != "env"} for r in rows if r["env"] == env_id])
        with open(g / "ablate.jsonl", "a") as fh:  # one line per invocation: the command, machine and wall time
            fh.write(json.dumps(record) + "\n")
        if not args.no_plot:
            from prefrl.plots import PlotError, plot_grid

            try:
                written = plot_grid([g], g)
                print(f"plots and summary for {env_id}: {g} ({', '.join(p.name for p in written)})")
            except PlotError as exc:
                print(f"prefrl ablate: no plots for {env_id}: {exc}", file=sys.stderr)
    print(f"grid done in {wall:.0f} s: {len(rows) - len(failed)} run(s) finished, {len(failed)} failed"
          + ("; rerun the same command to retry them (or prefrl train --resume RUN_DIR --debug to see why)"
             if failed else ""))
    return 1 if failed else 0


__all__ = ["main", "build_grid", "job_status", "run_job", "Job", "SweepError", "ConfigError"]
