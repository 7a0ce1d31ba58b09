"""Runs page: how the run is going (true return), what the reward model thinks, and how labeling goes."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import pandas as pd
import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import shared  # noqa: E402
from prefrl.labels.store import StoreError  # noqa: E402

st.set_page_config(page_title="prefrl: runs", page_icon=":material/monitoring:", layout="wide")


def _curves(run: Path) -> None:
    rows = shared.read_progress(run)
    if not rows:
        st.info(f"no progress.csv rows yet in {run}: the trainer writes one per rollout")
        return
    df = pd.DataFrame(rows).set_index("env_steps")
    last = rows[-1]

    c = st.columns(4)
    c[0].metric("env steps", f"{int(last.get('env_steps', 0)):,}")
    c[1].metric("true episode return (latest)", _fmt(last.get("true_episode_return")))
    c[2].metric("reward-model val. accuracy", _fmt(last.get("rm_val_acc")))
    c[3].metric("corr(learned, true reward)", _fmt(last.get("reward_corr")))

    st.subheader("Learning curve: TRUE episode return")
    st.caption("The task's own reward (what we care about), never the learned one.")
    st.line_chart(df[["true_episode_return"]].rename(columns={"true_episode_return": "true return (task reward)"}),
                  x_label="env steps", y_label="true episode return")

    st.subheader("Learned vs true episode return")
    st.caption("`learned` is the REWARD MODEL's return (normalised ensemble mean, arbitrary scale and offset); "
               "`true` is the task's. They should rise together; compare their shapes, not their values.")
    left, right = st.columns(2)
    with left:
        st.markdown("true return (task reward)")
        st.line_chart(df[["true_episode_return"]], x_label="env steps", y_label="true")
    with right:
        st.markdown("learned return (**reward model**)")
        st.line_chart(df[["learned_episode_return"]], x_label="env steps", y_label="learned (reward model)")
    pts = df[["true_episode_return", "learned_episode_return"]].dropna()
    if len(pts) >= 2:
        st.scatter_chart(pts.rename(columns={"true_episode_return": "true return",
                                             "learned_episode_return": "learned return (reward model)"}),
                         x="true return", y="learned return (reward model)", height=260)

    st.subheader("Reward model")
    acc = df[["rm_train_acc", "rm_val_acc"]].rename(columns={"rm_train_acc": "train accuracy",
                                                             "rm_val_acc": "validation accuracy"})
    st.line_chart(acc, x_label="env steps", y_label="preference accuracy (reward model)")
    st.line_chart(df[["labels"]], x_label="env steps", y_label="labels used by the trainer")


def _fmt(x: object) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3g}"


def _labels(run: Path) -> None:
    store = shared.open_store(run)
    if store is None:
        return
    try:
        records = store.labels()
        pairs = store.count_pairs()
        pending = store.count_pending()
    except StoreError as exc:
        st.error(str(exc))
        return
    finally:
        store.close()

    st.subheader("Labels")
    c = st.columns(4)
    c[0].metric("pairs", pairs)
    c[1].metric("pending (nobody answered)", pending)
    c[2].metric("labels", len(records))
    c[3].metric("labelers", len({r.labeler for r in records}))
    if not records:
        st.info("no labels yet")
        return
    df = pd.DataFrame([{**r._asdict(), "answer": r.answer.value} for r in records])
    t0 = df["created"].min()
    df["minutes"] = (df["created"] - t0) / 60.0

    st.markdown("Labels over time (cumulative, by labeler)")
    cum = df.assign(n=1).pivot_table(index="minutes", columns="labeler", values="n", aggfunc="sum").fillna(0).cumsum()
    st.line_chart(cum, x_label=f"minutes since the first label ({time.strftime('%Y-%m-%d %H:%M', time.localtime(t0))})",
                  y_label="labels")

    st.markdown("Labeler speed (seconds per label; synthetic teachers answer in 0 s)")
    speed = pd.DataFrame(shared.speed_by_labeler(records)).set_index("labeler")
    st.dataframe(speed.style.format({"median_seconds": "{:.1f}", "mean_seconds": "{:.1f}"}))
    people = df[df["seconds"] > 0]
    if not people.empty:
        st.bar_chart(people.groupby("labeler")["seconds"].median(), x_label="labeler",
                     y_label="median seconds per label")

    st.markdown("Answers by labeler")
    st.dataframe(pd.crosstab(df["labeler"], df["answer"]))

    agree = shared.agreement(records)
    st.markdown("Agreement on repeated pairs (pairs answered by 2+ labelers)")
    if agree.repeated_pairs == 0:
        st.caption("no pair has been answered by two labelers yet")
    else:
        c = st.columns(3)
        c[0].metric("repeated pairs", agree.repeated_pairs)
        c[1].metric("all labelers agree", f"{agree.all_agree:.0%}")
        c[2].metric("pairwise agreement", f"{agree.pairwise:.0%}")


def main() -> None:
    shared.guard()
    run = shared.choose_run()
    if run is None:
        return
    st.title(run.name)
    if not (run / shared.DB_NAME).is_file():
        st.error(f"{run / shared.DB_NAME} does not exist; choose a run folder that the trainer has started.")
        return
    st.button("Refresh")
    _curves(run)
    _labels(run)


main()
