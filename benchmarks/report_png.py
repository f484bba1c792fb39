"""Render a run report to one PNG in headless Chromium: how docs/report.png is made.

    python benchmarks/report_png.py LAKE_OR_REPORT [--out report.png] [--width 1300]

LAKE_OR_REPORT is a report's ``index.html``, its folder, or a lake (its latest report). Needs a
Chromium binary (Debian: ``apt-get install chromium``); the page is opened from disk, without a
server, as a person would open it. The screenshot is taken in a tall window and cropped below the
last drawn row. Prints the output path, its size and the render time.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Chromium on a machine without network: no background connections, no first-run work
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def report_page(target: str) -> Path:
    path = Path(target)
    for candidate in (path, path / "index.html", path / "_reports" / "runs" / "latest" / "index.html"):
        if candidate.is_file():
            return candidate.resolve()
    runs = sorted((path / "_reports" / "runs").glob("*/index.html"))
    if runs:
        return runs[-1].resolve()
    raise SystemExit(f"report_png: no run report at {target} (a report's index.html, its folder or a lake)")


def crop_below_content(png: Path) -> tuple[int, int]:
    """Cut the empty window below the page: rows equal to the bottom row's first pixel."""
    from PIL import Image

    with Image.open(png) as image:
        rgb = image.convert("RGB")
    width, height = rgb.size
    background = rgb.getpixel((0, height - 1))
    pixels = rgb.load()
    last = height - 1
    while last > 0 and all(pixels[x, last] == background for x in range(0, width, 4)):
        last -= 1
    rgb.crop((0, 0, width, min(height, last + 24))).save(png)
    return width, min(height, last + 24)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", help="report index.html, its folder, or a lake")
    parser.add_argument("--out", default="report.png")
    parser.add_argument("--width", type=int, default=1300)
    parser.add_argument("--max-height", type=int, default=16000, help="window height before cropping")
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser")
                        or shutil.which("google-chrome"))
    args = parser.parse_args(argv)
    if not args.chromium:
        raise SystemExit("report_png: no Chromium found (Debian: apt-get install chromium); or pass --chromium")
    page = report_page(args.target)
    out = Path(args.out).resolve()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cdp-chromium-") as profile:
        done = subprocess.run([args.chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                               f"--window-size={args.width},{args.max_height}", f"--screenshot={out}",
                               page.as_uri()], capture_output=True, text=True, timeout=300)
    if done.returncode != 0 or not out.is_file():
        print(done.stderr[-2000:], file=sys.stderr)
        raise SystemExit(f"report_png: Chromium exited {done.returncode} without a screenshot of {page}")
    width, height = crop_below_content(out)
    print(f"{out}: {width}x{height} px from {page} in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
