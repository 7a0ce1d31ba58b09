"""Regenerate results/reliability.md: kill -9 campaigns, the bad-input table, concurrency, security checks.

    .venv/bin/python benchmarks/reliability.py            # or: make reliability   (~10-15 min on 2 busy cores)
    .venv/bin/python benchmarks/reliability.py --quick    # one short campaign, 20 s of concurrency (a smoke run)

Everything runs on real runs in a temporary folder (kept with --keep). The pieces live with the tests that
check them in CI: tests/fault/faultlib.py (campaigns), tests/fault/concurrency.py, tests/test_bad_inputs.py.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("OMP_NUM_THREADS", "1")


def faults(work: Path, runs: int, hook_kills: int, random_kills: int, steps: int) -> tuple[list[str], bool]:
    from faultlib import campaign_specs, run_campaign

    from prefrl.reliability import PHASES

    campaigns = []
    for seed in range(1, runs + 1):
        c = run_campaign(work / f"run{seed}", campaign_specs(hook_kills, random_kills, seed), work / f"train{seed}.log",
                         total_steps=steps)
        print(f"campaign {seed}: {c.n_killed}/{len(c.kills)} kills, finished={c.finished}, "
              f"problems={c.all_problems[:3]} ({c.seconds:.0f} s)", flush=True)
        campaigns.append(c)
    by_phase: dict[str, list] = defaultdict(list)
    for c in campaigns:
        for k in c.kills:
            by_phase[k.spec.split(":")[0]].append(k)
    kills = [k for c in campaigns for k in c.kills]
    problems = [p for c in campaigns for p in c.all_problems]
    ok = not problems and all(c.finished for c in campaigns)
    lines = [
        "## Faults: kill -9, then --resume",
        "",
        f"{len(campaigns)} campaigns of {hook_kills + random_kills} SIGKILLs on synthetic-oracle runs (Pendulum-v1, "
        f"{steps:,} PPO steps in {steps // 512} rollouts, 40 labels, a refit and a checkpoint at every rollout), "
        "each kill followed by `prefrl train --resume`, the last resume running the run to its end. When a "
        "process misses its point and finishes the run, the campaign checks that run and goes on with a new "
        "one. Phase kills use `PREFRL_FAULT=<phase>:<n>[:<delay ms>]` (prefrl/reliability.py): the n-th "
        "time that process reaches the phase it kills itself, at once or after the delay (so the kill lands "
        "inside a PPO update or a refit). Random kills come from outside, 2-9 s after the process starts.",
        "",
        f"**{sum(k.killed for k in kills)} kills** ({len(kills)} attempted; a phase the process never reached "
        "is not counted), **problems found: " + (str(len(problems)) if problems else "none") + "**.",
        "",
        "| phase | where the kill lands | kills | labels on disk at the kills (all kept) | problems |",
        "|---|---|---:|---:|---|",
    ]
    for phase in sorted(by_phase):
        ks = by_phase[phase]
        where = PHASES.get(phase, "anywhere: SIGKILL from outside after a random delay")
        probs = [p for k in ks for p in k.problems]
        lines.append(f"| {phase} | {where} | {sum(k.killed for k in ks)}/{len(ks)} | "
                     f"{sum(k.labels_after for k in ks)} | {'; '.join(probs[:2]) or 'none'} |")
    lines += [
        "",
        "Checked after every kill: `PRAGMA integrity_check` is ok, `PRAGMA foreign_key_check` is empty, every "
        "label committed before the process started is still there, unchanged, exactly once (no two labels for "
        "one pair by one labeler), and progress.csv's steps are 512, 1024, ... without a gap or a repeat. "
        f"Checked at the end of each run: it finished (exit 0), progress.csv has each of the {steps // 512} "
        "rollouts once, "
        "40 pairs were asked and all 40 answered (pairs stored just before a kill are answered on resume), the "
        "final checkpoint loads with weights only (PPO via `set_parameters`, ensemble and reward trainer via "
        "`torch.load(weights_only=True)`), its state.json carries the label schedule's state (pairs asked, "
        "target, total) and no temporary checkpoint folder is left.",
        "",
        "| campaign | kills (specs in order) | run folders | labels in the last run | all finished | wall s |",
        "|---|---|---:|---:|---|---:|",
    ]
    for i, c in enumerate(campaigns, 1):
        specs = ", ".join(k.spec + ("" if k.killed else " (missed)") for k in c.kills)
        lines.append(f"| {i} | {c.n_killed}: {specs} | {len(c.runs)} | {c.final_labels} | "
                     f"{'yes' if c.finished else 'NO'} | {c.seconds:.0f} |")
    return lines, ok


def bad_inputs(work: Path) -> tuple[list[str], bool]:
    import test_bad_inputs as t

    source = t.make_source_run(work / "source")
    results = [t.run_case(case, work / "cases" / case.id, source) for case in t.CASES]
    n_ok = sum(r.ok for r in results)
    lines = [
        "## Bad input",
        "",
        f"{len(results)} bad inputs (tests/test_bad_inputs.py, one parametrized test per row): **{n_ok} of "
        f"{len(results)} pass**. Pass means: a non-zero exit (CLI, config.json) or a message (store API, app), "
        "the message is one line that names the fix, no traceback (`--debug` shows it), and the working "
        "folder is the same before and after (SQLite files compared by content, everything else byte for byte).",
        "",
        "| # | surface | bad input | exit | message | nothing written | pass |",
        "|---:|---|---|---:|---|---|---|",
    ]
    for i, r in enumerate(results, 1):
        msg = re.sub(r"/\S*/(cases|source)/", "…/", r.outcome.message.strip()).replace("|", "\\|")
        msg = msg.replace("\n", " ⏎ ")
        code = "–" if r.outcome.code is None else r.outcome.code
        lines.append(f"| {i} | {r.case.surface} | {r.case.bad_input.replace('|', '/')} | {code} | `{msg}` | "
                     f"{'yes' if not r.changed else 'NO: ' + ', '.join(r.changed[:3])} | "
                     f"{'yes' if r.ok else '**NO**'} |")
    return lines, n_ok == len(results)


def concurrency(work: Path, seconds: float) -> tuple[list[str], bool]:
    from concurrency import TRAIN_FLAGS, run_concurrency

    f = run_concurrency(work / "concurrent" / "run", seconds, work / "concurrent.log")
    ok = (f.locked_errors == 0 and not f.errors_shown and f.duplicate_labels == 0 and f.integrity == "ok"
          and not f.plot_failures and not f.page_problems)
    lines = [
        "## Concurrency: trainer, two labelers, the app and `prefrl plot` on one run folder",
        "",
        f"For {seconds:g} s after the first pair: `prefrl train {' '.join(TRAIN_FLAGS)}` (its oracle answers what "
        "people leave pending, so it writes labels too); two people, `alice` (in two browser tabs at once) and "
        "`bob`, answering through `app/shared.py`'s `save_answer`, the function behind the label page's buttons, "
        "each action with its own short-lived store as a Streamlit script run has; both app pages rendered "
        "every 2 s by streamlit's AppTest; `prefrl plot RUN_DIR` in a loop. Then the trainer gets Ctrl+C "
        "(SIGINT, exit 130).",
        "",
        "| figure | value |",
        "|---|---|",
    ]
    for k, v in f.summary().items():
        lines.append(f"| {k} | {v} |")
    if f.errors_shown or f.plot_failures or f.page_problems:
        lines += ["", "Messages: " + "; ".join((f.errors_shown + f.plot_failures + f.page_problems)[:5])]
    return lines, ok


def security() -> tuple[list[str], bool]:
    """Greps, as the issue asks: torch.load only with weights_only=True, no pickle, SQL only in the store and
    only with parameters."""
    files = [p for d in ("prefrl", "app", "envs") for p in (ROOT / d).rglob("*.py")]
    loads, unsafe_loads, pickles, sql_files, sql_fstrings = 0, [], [], set(), []
    for p in files:
        text = p.read_text()
        rel = p.relative_to(ROOT)
        for m in re.finditer(r"torch\.load\(([^()]*(\([^()]*\))?[^()]*)\)", text):
            loads += 1
            if "weights_only=True" not in m.group(1):
                unsafe_loads.append(f"{rel}: {m.group(0)}")
        for m in re.finditer(r"^\s*(import pickle|import cloudpickle|from pickle|.*pickle\.loads?\(|.*PPO\.load\()",
                             text, re.M):
            pickles.append(f"{rel}: {m.group(0).strip()}")
        if re.search(r"\.execute\(|sqlite3\.connect", text):
            sql_files.add(str(rel))
        for m in re.finditer(r"(?:\.execute|_read)\(f\"([^\"]*)\"", text):
            sql_fstrings.append(f"{rel}: {{{'}, {'.join(re.findall(r'{([^}]*)}', m.group(1)))}}}")
    sql_only_store = sql_files <= {"prefrl/labels/store.py"}
    ok = not unsafe_loads and not pickles and sql_only_store
    lines = [
        "## Security defaults",
        "",
        "- The app listens on 127.0.0.1 unless told otherwise (`prefrl app`, `make app`, `.streamlit/config.toml`). "
        "Bound anywhere else, `prefrl app --address ADDR` makes a random token (or takes `--token`), passes it "
        "in the environment (not on the command line, where `ps` shows it) and prints the URL with `?token=...`; "
        "both pages refuse a browser without it (checked once per session with `hmac.compare_digest`), and a "
        "server bound beyond 127.0.0.1 with no token configured shows nothing at all (tests/test_app.py, "
        "tests/test_browser.py).",
        "- Labeler names: the app takes 1-40 of `[A-Za-z0-9_.-]`; the store refuses anything outside "
        "`[A-Za-z0-9_.:-]{1,64}`. Clip paths: the store refuses absolute paths and `..` when writing and when "
        "reading (a crafted labels.sqlite), the app resolves every video inside its run folder (symlinks too) "
        "before serving it, `--labels` checks the same before copying. `--exp-name` cannot hold `/` or start "
        "with `.`; the app only offers run folders found under `--results` (or the one it was given).",
        f"- `torch.load`: {loads} call(s) in prefrl/, app/, envs/, "
        + ("all with `weights_only=True`." if not unsafe_loads else f"UNSAFE: {unsafe_loads}"),
        "- Pickle: " + ("none. `--resume` loads PPO's weights with `set_parameters` (weights only) and takes "
                        "the step count from state.json; `PPO.load` would unpickle ppo.zip's `data`."
                        if not pickles else f"FOUND: {pickles}"),
        f"- SQL: only in {', '.join(sorted(sql_files))}; every value is a `?` parameter. The f-strings "
        f"interpolate constants only: {'; '.join(sql_fstrings) or 'none'}.",
        "- Uploads: `--labels` (store type, schema version, foreign tables, labels present, clip files present, "
        "inside their run and of this env's shape) and `--reward-model` (loaded with weights only into an "
        "ensemble shaped for this env) are checked before a run folder is made.",
    ]
    return lines, ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "reliability.md")
    ap.add_argument("--runs", type=int, default=3, help="kill campaigns (default 3)")
    ap.add_argument("--hook-kills", type=int, default=7, help="phase kills per campaign (default 7)")
    ap.add_argument("--random-kills", type=int, default=2, help="random-time kills per campaign (default 2)")
    ap.add_argument("--steps", type=int, default=12288, help="PPO steps of each campaign's run (default 12288)")
    ap.add_argument("--seconds", type=float, default=180, help="concurrency test length (default 180)")
    ap.add_argument("--quick", action="store_true", help="1 campaign of 4 kills, 20 s of concurrency")
    ap.add_argument("--keep", action="store_true", help="keep the working folder")
    args = ap.parse_args()
    sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "fault")]  # the campaign, case and concurrency code
    if args.quick:
        args.runs, args.hook_kills, args.random_kills, args.seconds, args.steps = 1, 3, 1, 20, 6144
    work = Path(tempfile.mkdtemp(prefix="prefrl_reliability_"))
    t0 = time.monotonic()
    sections, oks = [], []
    try:
        for name, fn in (("faults", lambda: faults(work, args.runs, args.hook_kills, args.random_kills, args.steps)),
                         ("bad inputs", lambda: bad_inputs(work)),
                         ("concurrency", lambda: concurrency(work, args.seconds)),
                         ("security", security)):
            t = time.monotonic()
            lines, ok = fn()
            print(f"{name}: {'ok' if ok else 'PROBLEMS'} ({time.monotonic() - t:.0f} s)", flush=True)
            sections.append(lines)
            oks.append(ok)
    finally:
        if args.keep:
            print(f"working folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()
    header = [
        "# Reliability: crash safety, bad input, concurrency, security defaults",
        "",
        f"Regenerate with `make reliability` (`.venv/bin/python benchmarks/reliability.py"
        f"{' --quick' if args.quick else ''}`). Generated {time.strftime('%Y-%m-%d %H:%M')} on "
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, load average "
        f"{load[0]:.1f} at the end (other jobs share this machine); {time.monotonic() - t0:.0f} s in all. "
        f"Overall: **{'all checks pass' if all(oks) else 'PROBLEMS FOUND (see below)'}**.",
        "",
        "CI runs a shorter version of each part (`make test`): tests/fault/test_faults.py (8 kills, one per "
        "phase, and a torn progress.csv row), tests/fault/test_concurrency.py (25 s), tests/test_bad_inputs.py "
        "(every row of the table below), tests/test_app.py and tests/test_browser.py (token, paths).",
        "",
    ]
    text = "\n".join(header + [ln for s in sections for ln in s + [""]])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0 if all(oks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
