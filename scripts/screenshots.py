"""The dashboard's screenshots in docs/ (linked from README), made from a real run: the demo's two
pushes (build → test, the second breaking a test) through every component, then Debian's chromium
(Playwright) on the push list, the red job and its failed partition.

    .venv/bin/python scripts/screenshots.py [--out docs]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from playwright.async_api import async_playwright

from infrax.config import COMPONENTS, Config
from infrax.private import passable_temp_dir
from infrax.sample_project import break_one_test, make_sample_repo
from infrax.stack import Stack


async def until_ended(client: httpx.AsyncClient, job_id: str) -> dict:
    for _ in range(600):
        job = (await client.get(f"/api/v1/jobs/{job_id}")).json()
        if job["state"] in ("completed", "failed", "exception", "cancelled"):
            return job
        await asyncio.sleep(0.2)
    raise TimeoutError(f"job {job_id} did not end")


async def main(out: Path) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("chromium is missing: scripts/setup-browser.sh installs it")
    root = passable_temp_dir("infrax-screenshots-")  # the containers' task users reach their folders below it
    repo = root / "sample"
    good = make_sample_repo(repo, build=True)
    stack = Stack(Config(data_dir=root / "data", ports={name: 0 for name in COMPONENTS}))
    await stack.start()
    try:
        admin = {"Authorization": f"Bearer {stack.admin_token}"}
        async with httpx.AsyncClient(base_url=stack.urls["jobmaster"], headers=admin, timeout=60) as jobmaster:
            jobs = []
            for revision in (good, break_one_test(repo)):
                pushed = await jobmaster.post("/api/v1/pushes", json={"repository": str(repo), "revision": revision})
                pushed.raise_for_status()
                jobs.append(await until_ended(jobmaster, pushed.json()["id"]))
        red = jobs[1]
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            context = await browser.new_context(base_url=stack.urls["web"], viewport={"width": 1280, "height": 720})
            assert stack.admin_token is not None
            await context.add_cookies([{"name": "infrax_token", "value": stack.admin_token, "url": stack.urls["web"]}])
            page = await context.new_page()
            await page.goto("/")
            await page.screenshot(path=out / "dashboard-push-list.png", full_page=True)
            await page.goto(f"/jobs/{red['id']}")
            await page.locator("details").first.evaluate("d => d.open = true")
            await page.screenshot(path=out / "dashboard-job.png", full_page=True)
            await page.locator("a.chunk.s-failed").first.click()
            await page.wait_for_selector("#log[data-complete=yes]")
            await page.locator("#failure-lines a").first.click()
            await page.screenshot(path=out / "dashboard-partition.png", full_page=True)
            await browser.close()
    finally:
        await stack.stop()
        shutil.rmtree(root, ignore_errors=True)
    for name in ("dashboard-push-list.png", "dashboard-job.png", "dashboard-partition.png"):
        print(f"wrote {out / name} ({(out / name).stat().st_size:,} bytes)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs")
    asyncio.run(main(parser.parse_args().out))
