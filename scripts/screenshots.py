"""The screenshots in docs/: the campaign_export asset in the Dagster UI after the demo's
first export.

Runs `scripts/demo.py` in a throwaway DEMO_HOME on free ports, waits for its first
export, captures each page with headless Chromium (Debian's `chromium` package), then
stops the demo. Usage: `.venv/bin/python scripts/screenshots.py` (about a minute).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dev import process_group  # noqa: E402
from dev.demo_data import LARGE_CAMPAIGN_ID  # noqa: E402

PAGES = {
    "campaign_export.png": f"assets/campaign_export?view=partitions&partition={LARGE_CAMPAIGN_ID}",
    "campaign_export_checks.png": "assets/campaign_export?view=checks",
}


def capture(url: str, path: Path) -> None:
    browser = shutil.which("chromium") or sys.exit("error: chromium is not installed")
    subprocess.run(
        [
            browser,
            "--headless=new",
            "--no-sandbox",  # as root in a container
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1440,1000",
            "--virtual-time-budget=20000",  # let the UI fetch and render its data
            f"--screenshot={path}",
            url,
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )


def main() -> int:
    home = Path(tempfile.mkdtemp(prefix="demo-screens-"))
    ui_port = process_group.free_port()
    env = {
        **os.environ,
        "DEMO_HOME": str(home),
        "DEMO_UI_PORT": str(ui_port),
        "DEMO_S3_PORT": str(process_group.free_port()),
        "DEMO_API_PORT": str(process_group.free_port()),
    }
    env.pop("DATABASE_URL", None)  # the demo's own SQLite database
    demo = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "demo.py")],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        for line in demo.stdout:
            print(line, end="", flush=True)
            if line.startswith("Ctrl-C stops the demo"):
                break
        else:
            return 1
        time.sleep(3)  # the partition's check results and metadata are written by now
        for name, page in PAGES.items():
            capture(f"http://127.0.0.1:{ui_port}/{page}", REPO / "docs" / name)
            print(f"docs/{name}: {page}")
        return 0
    finally:
        process_group.stop_all([demo])
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
