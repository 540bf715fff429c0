"""How a run's report behaves in Debian's Chromium: its size, when it is interactive, when the health map is drawn
with its images unpacked, and how fast a hover over the map is answered.

    python bench/report_page.py RUN_DIR [--loads 3]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"


def load_once(browser, page_path: Path) -> dict:
    page = browser.new_page(viewport={"width": 1300, "height": 1000})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    start = time.perf_counter()
    page.goto(page_path.as_uri())
    page.wait_for_selector("#health-map[data-ready='1']", timeout=60000)
    ready = time.perf_counter() - start
    nav = json.loads(page.evaluate("JSON.stringify(performance.getEntriesByType('navigation')[0])"))
    i = page.evaluate("window.healthMap.find(function (l, m) { return m & 12; })")  # a duplicate or an outlier
    x, y = page.evaluate(f"window.healthMap.point({max(i, 0)})")
    start = time.perf_counter()
    page.locator("#health-map").hover(position={"x": x, "y": y})
    tip = page.locator("#health-map-tip span").text_content()
    hover = time.perf_counter() - start
    found = {"dom_interactive_ms": nav["domInteractive"], "map_ready_ms": 1000 * ready,
             "draw_ms": page.evaluate("window.healthMap.state.drawMs"), "hover_ms": 1000 * hover,
             "points": page.evaluate("window.healthMap.n"), "tip": tip, "errors": errors}
    page.close()
    return found


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--loads", type=int, default=3)
    a = p.parse_args(argv)
    page_path = (a.run_dir / "report.html").resolve()
    print(f"{page_path}: {page_path.stat().st_size / 1e6:.2f} MB")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        for n in range(a.loads):
            print(f"load {n}: {load_once(browser, page_path)}")
        browser.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
