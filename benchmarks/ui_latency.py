"""Label-page latency in headless Chromium: from a key press to both next videos playable.

    .venv/bin/python benchmarks/ui_latency.py [--answers 50] [--out results/bench/ui_latency.md]

Builds a fake run folder (app/demo.py: tiny H.264 clips, no training) in a temporary directory, starts
`streamlit run app/Label.py` on 127.0.0.1, enters a labeler name and answers `--answers` pairs with the
arrow keys. For each answer it measures, inside the page, the time from the keydown event to the moment
the marker shows the next pair and both of its videos have readyState >= 2 (HAVE_CURRENT_DATA).
Writes the median and p95 (target p95 <= 300 ms) with the machine's load to a Markdown file.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "app"))
import demo  # noqa: E402

TARGET_P95_MS = 300.0
KEYS = ["ArrowLeft", "ArrowRight", "ArrowUp", "ArrowDown"]

# Resolves with ms from the last handled keydown (window.__prefrlLastKey.t, set by the page's key handler)
# to the next pair on screen with both videos at readyState >= 2; polls every 2 ms.
WAIT_NEXT = """(old) => new Promise((resolve, reject) => {
  const t0 = performance.now();
  (function poll() {
    const m = document.querySelector('.prefrl-render');
    const k = window.__prefrlLastKey;
    if (m && k && m.dataset.pair !== String(old)) {
      const v = [...document.querySelectorAll('.st-key-slot' + m.dataset.visible + ' video')];
      if (v.length === 2 && v.every(x => x.readyState >= 2 && x.videoWidth > 0 && !x.error)) {
        resolve({ms: performance.now() - k.t, pair: m.dataset.pair});
        return;
      }
    }
    if (performance.now() - t0 > 20000) { reject(new Error('no next pair within 20 s')); return; }
    setTimeout(poll, 2);
  })();
})"""
MARKER = "() => { const m = document.querySelector('.prefrl-render'); return m ? m.dataset.pair : null; }"


def percentile(xs: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100])."""
    s = sorted(xs)
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def measure(answers: int, workdir: Path) -> tuple[list[float], dict]:
    from playwright.sync_api import sync_playwright

    run = workdir / "run"
    t = time.perf_counter()
    demo.make_run(run, pairs=answers + 2, seed=1)
    build = time.perf_counter() - t
    load_before = os.getloadavg()
    times: list[float] = []
    with demo.serve(run, workdir / "streamlit.log") as url, sync_playwright() as pw:
        with demo.open_page(pw, url) as (page, errors):
            page.get_by_label("Labeler name").fill("bench")
            page.get_by_role("button", name="Start labeling").click()
            page.wait_for_function("() => document.querySelector('.prefrl-render')", timeout=30_000)
            page.wait_for_timeout(1000)  # first pair and the prefetched one loaded
            for i in range(answers):
                old = page.evaluate(MARKER)
                page.wait_for_timeout(150)  # a person takes a while; lets the page settle between answers
                page.keyboard.press(KEYS[i % len(KEYS)])
                out = page.evaluate(WAIT_NEXT, old)
                times.append(out["ms"])
            page.screenshot(path=str(workdir / "last.png"))
    info = {"build_s": build, "load_before": load_before, "load_after": os.getloadavg()}
    return times, info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--answers", type=int, default=50)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "bench" / "ui_latency.md")
    args = p.parse_args()
    if not Path(demo.CHROMIUM).exists():
        raise SystemExit(f"{demo.CHROMIUM} is missing; install it (as root): apt-get install -y chromium")
    with tempfile.TemporaryDirectory(prefix="ui_latency_") as tmp:
        times, info = measure(args.answers, Path(tmp))
    med, p95 = statistics.median(times), percentile(times, 95)
    import streamlit

    chromium = subprocess.run([demo.CHROMIUM, "--version"], capture_output=True, text=True).stdout.strip()
    verdict = "meets" if p95 <= TARGET_P95_MS else "MISSES"
    lines = [
        "# Label page latency: key press -> both next videos playable",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}, `benchmarks/ui_latency.py --answers {args.answers}`",
        "",
        "| answers | median ms | p95 ms | min ms | max ms | target p95 |",
        "|---|---|---|---|---|---|",
        f"| {len(times)} | {med:.0f} | {p95:.0f} | {min(times):.0f} | {max(times):.0f} | <= {TARGET_P95_MS:.0f} ms "
        f"({verdict}) |",
        "",
        "Measured in the page: from the keydown event to the marker showing the next pair with both of its "
        "`<video>` elements at readyState >= 2 (the next pair was prefetched in the hidden slot).",
        "",
        f"- machine: {platform.node()}, {os.cpu_count()} CPUs, {platform.platform()}",
        f"- load average (1, 5, 15 min) before: {', '.join(f'{x:.2f}' for x in info['load_before'])}; "
        f"after: {', '.join(f'{x:.2f}' for x in info['load_after'])}",
        f"- {chromium} (headless), streamlit {streamlit.__version__}, Python {platform.python_version()}",
        f"- fake run: {args.answers + 2} pairs of 20-frame 256x256 H.264 clips, built in {info['build_s']:.1f} s",
        f"- all times (ms): {', '.join(f'{t:.0f}' for t in times)}",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines[4:7]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
