"""Label page: one pending pair at a time, two looping clips side by side, four answers, arrow keys.

Start: streamlit run app/Label.py --server.address 127.0.0.1 --server.headless true -- --run RUN_DIR

Prefetch: the page always holds two "slots" (containers with two videos each): the visible one shows
the current pair, the other (moved off-screen by CSS) already plays the next pending pair. Answering
flips which slot is visible, so the next pair's <video> elements are the ones that were loaded and
playing all along; only the now-hidden slot loads a new pair.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import streamlit as st
from streamlit.runtime.media_file_storage import MediaFileStorageError

sys.path.insert(0, str(Path(__file__).resolve().parent))
import shared  # noqa: E402
from prefrl.labels.store import Answer, LabelStore, Pair, StoreBusy, StoreError  # noqa: E402

st.set_page_config(page_title="prefrl: label", page_icon=":material/compare:", layout="wide")

KEYS = {Answer.LEFT: "←", Answer.RIGHT: "→", Answer.EQUAL: "↑", Answer.CANT_TELL: "↓"}
REFRESH_SECONDS = 3.0

# One global keydown listener on the page (installed once per browser tab); it clicks the button whose
# container carries the matching st-key-* class. After a press it ignores keys until the page has been
# re-rendered (the .prefrl-render marker's data-n changes) or 2 s passed, so a double press never answers
# a pair the labeler has not seen. Keys typed into inputs are left alone.
KEY_SCRIPT = """
<script>
(function () {
  const w = window;
  if (w.__prefrlKeys) return;
  w.__prefrlKeys = true;
  const map = {ArrowLeft: "ans_left", ArrowRight: "ans_right", ArrowUp: "ans_equal",
               ArrowDown: "ans_cant_tell", u: "undo", U: "undo", Backspace: "undo"};
  let locked = null, lockedAt = 0;
  document.addEventListener("keydown", function (e) {
    const key = map[e.key];
    if (!key || e.ctrlKey || e.metaKey || e.altKey) return;
    const t = e.target;
    if (t && (["INPUT", "TEXTAREA", "SELECT"].includes(t.tagName) || t.isContentEditable)) return;
    const marker = document.querySelector(".prefrl-render");
    const btn = document.querySelector(".st-key-" + key + " button");
    if (!marker || !btn || btn.disabled) return;
    e.preventDefault();
    if (e.repeat) return;
    const n = marker.dataset.n;
    if (locked === n && performance.now() - lockedAt < 2000) return;
    locked = n; lockedAt = performance.now();
    w.__prefrlLastKey = {key: e.key, t: performance.now()};
    btn.click();
  }, true);
  // When a new pair is shown (the marker's data-pair changes), restart its two prefetched videos together
  // from the first frame: hidden videos do not autoplay, and both clips should start in step. Once in headless
  // Chromium one clip stayed paused at t=0 (a play() rejected while the video loaded, or a video element that
  // arrived after the pair changed): for the pair's first 3 s a paused clip restarts both; later a pause is the
  // person's.
  let shownPair = null, shownAt = 0;
  function restart(videos) {
    videos.forEach(function (v) {
      v.muted = true;
      try { v.currentTime = 0; } catch (err) {}
      const p = v.play();
      if (p && p.catch) p.catch(function () {});
    });
  }
  setInterval(function () {
    const marker = document.querySelector(".prefrl-render");
    if (!marker) return;
    const slot = document.querySelector(".st-key-slot" + marker.dataset.visible);
    if (!slot) return;
    const videos = slot.querySelectorAll("video");
    if (marker.dataset.pair !== shownPair) {
      shownPair = marker.dataset.pair;
      shownAt = performance.now();
      restart(videos);
    } else if (performance.now() - shownAt < 3000 && [...videos].some(function (v) { return v.paused; })) {
      restart(videos);
    }
  }, 50);
})();
</script>
"""

CSS = """
<style>
.st-key-slot0 video, .st-key-slot1 video {width: 100%%; height: 42vh; object-fit: contain; background: #000;}
.st-key-slot%(hidden)d {position: fixed !important; left: -20000px; top: 0; width: 60vw;
                        pointer-events: none; visibility: hidden;}
</style>
"""


def _state() -> dict:
    return st.session_state


def _reset_run_state(run: Path) -> None:
    """Per-run session state; switching runs starts afresh."""
    s = _state()
    if s.get("_state_run") == str(run):
        return
    s["_state_run"] = str(run)
    s["slots"] = [None, None]
    s["visible"] = 0
    s["shown"] = {}
    s["skipped"] = set()
    s["focus"] = None
    s["flash"] = []
    s["last"] = None


def _flash(kind: str, text: str) -> None:
    _state().setdefault("flash", []).append((kind, text))


# --- callbacks (run before the script body, each with its own short-lived store) ---------------

def _answer(run: str, labeler: str, pair_id: int, answer: str) -> None:
    s = _state()
    shown = s.setdefault("shown", {})
    seconds = max(time.time() - shown.get(pair_id, time.time()), 1e-3)
    kind, text = shared.save_answer(Path(run), labeler, pair_id, answer, seconds)
    if kind == "ok":
        s["last"] = (pair_id, Answer(answer), seconds)
    else:
        _flash(kind, text)
    if s.get("focus") == pair_id:
        s["focus"] = None
    shown.pop(pair_id, None)


def _undo(run: str, labeler: str) -> None:
    s = _state()
    try:
        with LabelStore(Path(run) / shared.DB_NAME, timeout=5.0) as store:
            mine = [r for r in store.labels() if r.labeler == labeler]
            if not mine:
                _flash("info", "nothing to undo: you have no labels in this run")
                return
            last = mine[-1]
            store.delete_label(last.id, labeler)
    except StoreBusy:
        _flash("error", "the label store is busy (the trainer is writing); nothing was undone, press undo again")
        return
    except StoreError as exc:
        _flash("error", str(exc))
        return
    s["focus"] = last.pair_id  # show the undone pair again, first
    s.setdefault("skipped", set()).discard(last.pair_id)
    s["last"] = None
    _flash("info", f"undid your answer to pair {last.pair_id} ({shared.ANSWER_TEXT[last.answer]}); answer it again")


def _skip(pair_id: int) -> None:
    s = _state()
    s.setdefault("skipped", set()).add(pair_id)
    if s.get("focus") == pair_id:
        s["focus"] = None


def _clear_skips() -> None:
    _state()["skipped"] = set()


def _set_labeler() -> None:
    name = _state().get("_labeler_input", "").strip()
    if shared.valid_labeler(name):
        _state()["labeler"] = name
        st.query_params["labeler"] = name
    else:
        _flash("error", f"'{name}' is not a usable labeler name: use 1 to 40 letters, digits, '_', '.' or '-' "
                        "(no spaces)")


def _change_labeler() -> None:
    _state().pop("labeler", None)
    st.query_params.pop("labeler", None)


# --- pieces of the page --------------------------------------------------------------------

def _ask_labeler() -> Optional[str]:
    s = _state()
    if "labeler" not in s:
        from_url = st.query_params.get("labeler")
        if from_url and shared.valid_labeler(from_url):
            s["labeler"] = from_url
    if "labeler" in s:
        return s["labeler"]
    st.subheader("Who is labeling?")
    st.caption("Your name goes with every label you give (letters, digits, '_', '.', '-'; at most 40).")
    with st.form("labeler_form", border=False):
        st.text_input("Labeler name", key="_labeler_input", max_chars=40, placeholder="e.g. alice")
        st.form_submit_button("Start labeling", on_click=_set_labeler, type="primary")
    return None


def _queue(store: LabelStore, labeler: str) -> tuple[list[Pair], int]:
    """(current and next pair, or fewer; pending count for this labeler)."""
    s = _state()
    pending = store.pending_pairs(labeler)
    order = [p for p in pending if p.id not in s["skipped"]]
    focus = s.get("focus")
    if focus is not None:
        hit = [p for p in order if p.id == focus]
        if hit:
            order = hit + [p for p in order if p.id != focus]
        else:
            s["focus"] = None  # answered meanwhile (another tab)
    return order[:2], len(pending)


def _place(queue: list[Pair]) -> None:
    """Put the current pair in a slot (flipping to the prefetched one when it is there) and the next in the other."""
    s = _state()
    slots, vis = s["slots"], s["visible"]
    ids = [p.id for p in queue] + [None, None]
    cur, nxt = ids[0], ids[1]
    if cur is not None and slots[vis] != cur and slots[1 - vis] == cur:
        vis = 1 - vis
    slots[vis] = cur
    slots[1 - vis] = nxt
    s["visible"] = vis
    if cur is not None and cur not in s["shown"]:
        s["shown"][cur] = time.time()


def _videos(store: LabelStore, run: Path, pair: Optional[Pair], slot: int) -> list[str]:
    """Two looping, muted, autoplaying videos side by side; returns the problems (missing files)."""
    missing = []
    if pair is None:
        return missing
    cols = st.columns(2, gap="small")
    for col, clip_id, side in ((cols[0], pair.left_clip, "left"), (cols[1], pair.right_clip, "right")):
        with col:
            try:
                clip = store.clip(clip_id)
            except StoreError as exc:
                missing.append(str(exc))
                continue
            try:
                path = None if clip.video is None else shared.video_path(run, clip.video)
            except StoreError as exc:
                missing.append(f"{side} clip {clip_id}: {exc}")
                st.error(f"{side} clip {clip_id}: {exc}")
                continue
            what = None
            if path is None:
                what = "has no video (rendered without --render-clips?)"
            elif not path.is_file():
                what = f"video {run / clip.video} is missing"
            else:
                try:  # alt keeps the two sides and slots apart (st.video has no key); it is the same whether the
                    # slot is visible or not, so flipping slots keeps the very same <video> elements.
                    st.video(str(path), autoplay=True, muted=True, loop=True,
                             alt=f"{side} clip {clip_id} (slot {slot})")
                except (OSError, MediaFileStorageError):  # deleted between the check and Streamlit's read
                    what = f"video {run / clip.video} is missing"
            if what is not None:
                missing.append(f"{side} clip {clip_id}: {what}")
                st.error(f"{side} clip {clip_id}: {what}")
                continue
            st.caption(f"{side} · clip {clip_id}")
    return missing


def _progress(store: LabelStore, labeler: str, pending_mine: int) -> None:
    records = store.labels()
    mine = sum(r.labeler == labeler for r in records)
    c = st.columns(5)
    c[0].metric("pending for you", pending_mine)
    c[1].metric("unlabelled by anyone", store.count_pending())
    c[2].metric("labels (all)", len(records))
    c[3].metric(f"labels by {labeler}", mine)
    c[4].metric("your labels/min (10 min)", f"{shared.labels_per_minute(records, labeler):.1f}")


@st.fragment(run_every=REFRESH_SECONDS)
def _wait_for_pairs(run: str, labeler: str) -> None:
    """While nothing is pending, look again every few seconds and re-render the page when pairs arrive."""
    try:
        with LabelStore(Path(run) / shared.DB_NAME, timeout=5.0) as store:
            pending = [p for p in store.pending_pairs(labeler, limit=len(_state()["skipped"]) + 1)
                       if p.id not in _state()["skipped"]]
    except StoreError as exc:
        st.error(str(exc))
        return
    if pending:
        st.rerun(scope="app")
    st.caption(f"checked {time.strftime('%H:%M:%S')}; looking again every {REFRESH_SECONDS:g} s")


def main() -> None:
    s = _state()
    s["render_n"] = s.get("render_n", 0) + 1
    shared.guard()
    st.html(KEY_SCRIPT, unsafe_allow_javascript=True)
    run = shared.choose_run()
    if run is None:
        return
    _reset_run_state(run)
    for kind, text in s.get("flash", []):
        getattr(st, kind)(text)
    s["flash"] = []
    store = shared.open_store(run)
    if store is None:
        return
    try:
        _page(store, run)
    except StoreError as exc:
        st.error(str(exc))
    finally:
        store.close()


def _page(store: LabelStore, run: Path) -> None:
    s = _state()
    labeler = _ask_labeler()
    if labeler is None:
        return
    st.sidebar.markdown(f"Labeling as **{labeler}**")
    st.sidebar.button("Change labeler", on_click=_change_labeler)

    queue, pending_mine = _queue(store, labeler)
    _place(queue)
    _progress(store, labeler, pending_mine)
    if not queue:
        skipped = len(s["skipped"])
        if skipped and pending_mine:
            st.info(f"you skipped all {skipped} remaining pair(s)")
            st.button("Show skipped pairs again", on_click=_clear_skips)
        else:
            st.info("no pending pairs yet — the trainer adds them at each rollout end")
        st.html(f'<span class="prefrl-render" data-n="{s["render_n"]}" data-pair="" data-visible=""></span>')
        c = st.columns([1, 1, 4])
        c[0].button("Refresh", key="refresh")
        c[1].button("u  undo my last", key="undo", on_click=_undo, args=(str(run), labeler))
        _wait_for_pairs(str(run), labeler)
        return

    pair = queue[0]
    st.html(f'<span class="prefrl-render" data-n="{s["render_n"]}" data-pair="{pair.id}" '
            f'data-visible="{s["visible"]}"></span>')
    st.html(CSS % {"hidden": 1 - s["visible"]})
    by_id = {p.id: p for p in queue}
    problems: list[str] = []
    for k in (0, 1):
        with st.container(key=f"slot{k}"):
            shown = k == s["visible"]
            slot_pair = by_id.get(s["slots"][k])
            if slot_pair is not None:  # the same elements whether shown or hidden (see _videos)
                st.markdown(f"**Pair {slot_pair.id}** · which clip is better? <span style='color:gray'>"
                            f"(chosen by {slot_pair.rule}, reward model v{slot_pair.model_version})</span>",
                            unsafe_allow_html=True)
            found = _videos(store, run, slot_pair, k)
            if shown:
                problems = found
    if problems:
        st.warning("this pair cannot be shown: " + "; ".join(problems))
        st.button(f"Skip pair {pair.id}", key="skip", on_click=_skip, args=(pair.id,), type="primary")

    args = (str(run), labeler, pair.id)
    cols = st.columns(5)
    for col, answer in zip(cols, Answer):
        col.button(f"{KEYS[answer]}  {shared.ANSWER_TEXT[answer]}", key=f"ans_{answer.value}",
                   on_click=_answer, args=(*args, answer.value), width="stretch",
                   disabled=bool(problems))
    cols[4].button("u  undo my last", key="undo", on_click=_undo, args=(str(run), labeler),
                   width="stretch")
    last = s.get("last")
    note = "Keys: ← left · → right · ↑ equal · ↓ can't tell · u or Backspace undo."
    if last is not None:
        note = f"Last: pair {last[0]} → {shared.ANSWER_TEXT[last[1]]} in {last[2]:.1f} s. " + note
    st.caption(note)


main()
