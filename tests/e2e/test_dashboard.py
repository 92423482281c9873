"""The dashboard in a real browser (Debian's chromium, driven by Playwright): the push list with the
demo's green and red jobs, live; a red partition's log with its failure picked out; a running
partition's log growing; cancel and re-run from the page; `/docs` with the network unplugged."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, Route, async_playwright, expect

from infrax.sample_project import break_one_test, make_sample_repo
from tests.e2e.conftest import Running
from tests.jobmaster.conftest import commit, git, job_in

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="Debian's chromium is not installed (make test installs it: scripts/setup-browser.sh)",
)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    assert CHROMIUM is not None, "chromium is missing: scripts/setup-browser.sh installs it"
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        await launched.close()


async def signed_in(browser: Browser, infrax: Running) -> Page:
    """A page of the dashboard whose viewer signed in with the admin token."""
    context = await browser.new_context(base_url=infrax.stack.urls["web"])
    page = await context.new_page()
    await page.goto("/login")
    assert infrax.stack.admin_token is not None
    await page.fill("input[name=token]", infrax.stack.admin_token)
    await page.click("button[type=submit]")
    await page.wait_for_url("**/")
    return page


async def push(infrax: Running, repo: Path, revision: str) -> str:
    pushed = await infrax["jobmaster"].post("/api/v1/pushes", json={"repository": str(repo), "revision": revision})
    assert pushed.status_code == 201, pushed.text
    return str(pushed.json()["id"])


def project_with(tmp_path: Path, name: str, bootstrapper: str, **task: Any) -> Path:
    repo = tmp_path / name
    repo.mkdir()
    git(repo, "init", "--quiet")
    git(repo, "config", "user.email", "a@infrax.invalid")
    git(repo, "config", "user.name", "a")
    fields = "".join(f", {k}: {v}" for k, v in task.items())
    config = (
        f"version: 1\nproject: {name}\ntasks:\n"
        f"  - {{name: unit, containerTag: linux_x86_64, bootstrapper: {bootstrapper}, files: [a.py, b.py, c.py],"
        f" checkout: false{fields}}}\n"
    )
    commit(repo, {".infrax.yml": config, "a.py": "", "b.py": "", "c.py": ""}, "first")
    return repo


async def test_the_push_list_shows_green_and_red_live_and_a_red_log_picks_out_the_failure(
    start_stack: Any, tmp_path: Path, browser: Browser
) -> None:
    infrax = await start_stack()
    repo = tmp_path / "sample"
    good = make_sample_repo(repo, build=True)  # the demo's: a build, then 3 test partitions on it
    green = await push(infrax, repo, good)
    await job_in(infrax["jobmaster"], green, "completed", "failed", "exception")
    page = await signed_in(browser, infrax)
    await page.evaluate("window.notReloaded = true")
    await expect(page.locator(f'.push[data-job="{green}"] .job-state')).to_have_text("completed")

    # A new push appears on the open page, and turns red, without a reload.
    red = await push(infrax, repo, break_one_test(repo))
    row = page.locator(f'.push[data-job="{red}"]')
    await expect(row.locator(".job-state")).to_have_text("failed", timeout=30_000)
    await expect(row.locator("a.chunk.s-failed")).to_have_count(1)
    await expect(row.locator("a.chunk.s-completed")).to_have_count(3)  # the build and two test chunks
    assert await page.evaluate("window.notReloaded") is True
    await expect(page.locator("#pushes .pushes .push")).to_have_count(2)

    await row.locator("a.chunk.s-failed").click()
    await page.wait_for_url("**/partitions/**")
    await expect(page.locator("#log")).to_have_attribute("data-complete", "yes")
    raised = page.locator(".log .line.k-raised")
    await expect(raised.filter(has_text="AssertionError: 4 != 5")).to_have_count(1)
    verdict = page.locator("#failure-lines a", has_text="FAIL: test_mul_2")
    await expect(verdict).to_have_count(1)
    await verdict.click()  # to its line
    assert (await page.evaluate("location.hash")).startswith("#L")
    line = page.locator(await page.evaluate("location.hash"))
    await expect(line).to_contain_text("FAIL: test_mul_2")
    raw = await page.request.get(await page.locator("#raw").get_attribute("href") or "")
    assert raw.ok and "AssertionError: 4 != 5" in await raw.text()


async def test_a_running_partition_s_log_grows_on_the_page(start_stack: Any, tmp_path: Path, browser: Browser) -> None:
    infrax = await start_stack()
    more, done = tmp_path / "more", tmp_path / "done"
    talker = tmp_path / "talk.sh"
    # Prints a first line, then one more each time the test asks (a file appears), then ends.
    talker.write_text(
        "#!/bin/sh\necho 'line one'\nn=0\n"
        f'while [ ! -f {done} ]; do if [ -f {more} ]; then n=$((n+1)); echo "more $n"; rm -f {more}; fi; '
        "sleep 0.05; done\necho 'the end'\n"
    )
    talker.chmod(0o755)
    repo = project_with(tmp_path, "talky", str(talker), partitions=1)
    job_id = await push(infrax, repo, "HEAD")
    job = await job_in(infrax["jobmaster"], job_id, "running", timeout=30)
    request = await infrax.request(job["requestId"])
    (part,) = request.tasks[0].partitions
    page = await signed_in(browser, infrax)
    await page.goto(f"/partitions/{part.id}")
    await page.evaluate("window.notReloaded = true")
    lines = page.locator(".log .line")
    await expect(lines.filter(has_text="line one")).to_have_count(1)
    for n in (1, 2):
        (tmp_path / "more").touch()
        await expect(lines.filter(has_text=f"more {n}")).to_have_count(1, timeout=15_000)
    assert await page.locator("#log").get_attribute("data-complete") == "no"
    done.touch()
    await expect(page.locator("#log")).to_have_attribute("data-complete", "yes", timeout=30_000)
    await expect(lines.filter(has_text="the end")).to_have_count(1)
    assert await page.evaluate("window.notReloaded") is True


async def test_cancel_from_the_page_stops_the_job(start_stack: Any, tmp_path: Path, browser: Browser) -> None:
    infrax = await start_stack()
    started = tmp_path / "started"
    sleeper = tmp_path / "sleep.sh"
    sleeper.write_text(f"#!/bin/sh\ntouch {started}\nsleep 300\n")
    sleeper.chmod(0o755)
    repo = project_with(tmp_path, "sleepy", str(sleeper), partitions=3)
    job_id = await push(infrax, repo, "HEAD")
    await job_in(infrax["jobmaster"], job_id, "running", timeout=30)
    page = await signed_in(browser, infrax)
    await page.goto(f"/jobs/{job_id}")
    await page.click("button[data-action=cancel]")
    await expect(page.locator("#action-result")).to_have_attribute("data-outcome", "done")
    job = await job_in(infrax["jobmaster"], job_id, "cancelled", timeout=30)
    request = await infrax.request(job["requestId"])
    assert {p.state for p in request.tasks[0].partitions} == {"cancelled"}
    await expect(page.locator("#job-state")).to_have_text("cancelled", timeout=15_000)  # live, on the page


async def test_rerun_of_the_failed_partitions_from_the_page_runs_only_those(
    start_stack: Any, tmp_path: Path, browser: Browser
) -> None:
    infrax = await start_stack()
    journal, fixed = tmp_path / "journal", tmp_path / "fixed"
    run = tmp_path / "run.sh"
    run.write_text(
        f'#!/bin/sh\necho "$INFRAX_RUN $*" >> {journal}\ncase "$*" in *b.py*) [ -f {fixed} ] || exit 1;; esac\n'
    )
    run.chmod(0o755)
    repo = project_with(tmp_path, "flaky", str(run), partitions=3, retries=0)
    job_id = await push(infrax, repo, "HEAD")
    await job_in(infrax["jobmaster"], job_id, "failed", timeout=30)
    fixed.touch()
    page = await signed_in(browser, infrax)
    await page.goto(f"/jobs/{job_id}")
    await page.click("button[data-action=rerun-failed]")
    await expect(page.locator("#action-result")).to_have_attribute("data-outcome", "done")
    job = await job_in(infrax["jobmaster"], job_id, "completed", timeout=30)
    assert journal.read_text().splitlines()[3:] == ["1 b.py"], "only the failed partition ran again"
    request = await infrax.request(job["requestId"])
    assert sorted((p.files[0], p.run) for p in request.tasks[0].partitions) == [("a.py", 0), ("b.py", 1), ("c.py", 0)]
    await expect(page.locator("#job-state")).to_have_text("completed", timeout=15_000)


async def test_docs_render_with_the_network_unplugged(start_stack: Any, browser: Browser) -> None:
    infrax = await start_stack()
    context = await browser.new_context()
    outside: list[str] = []

    async def unplugged(route: Route) -> None:
        url = route.request.url
        if url.startswith(("http://127.0.0.1", "http://localhost")):
            await route.continue_()
        else:
            outside.append(url)
            await route.abort("internetdisconnected")

    await context.route("**/*", unplugged)
    page = await context.new_page()
    for component in ("jobmaster", "scheduler"):
        await page.goto(f"{infrax.stack.urls[component]}/docs")
        await expect(page.locator(".swagger-ui .info .title")).to_contain_text("infrax", timeout=15_000)
        await expect(page.locator(".swagger-ui .opblock").first).to_be_visible()
    assert outside == [], f"/docs reached outside: {outside}"
