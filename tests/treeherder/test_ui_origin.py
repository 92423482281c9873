"""Treeherder's UI runs on an origin of its own and `fetch()`es a run's artifact list, its log and
its errorsummary from the Taskcluster root URL: in a real browser (Debian's chromium), from a page
of another origin, those reads work, through the queue API's redirects to the executioner, and
nothing else does (a POST from that page is refused by the browser)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from playwright.async_api import Browser

from infrax.sample_project import break_one_test, make_sample_repo
from tests.e2e.test_dashboard import browser, pytestmark
from tests.jobmaster.conftest import job_in, wait_for
from tests.treeherder.test_taskcluster import collecting

__all__ = ["browser", "pytestmark"]


@contextlib.contextmanager
def treeherder_origin() -> Iterator[str]:
    """A page served from an origin of its own (another port), as Treeherder's UI is."""

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<!doctype html><title>Treeherder</title>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


READS = """async ([root, task]) => {
  const list = await (await fetch(`${root}/api/queue/v1/task/${task}/runs/0/artifacts`)).json();
  const names = list.artifacts.map(a => a.name);
  const run = `${root}/api/queue/v1/task/${task}/runs/0/artifacts`;
  const log = await (await fetch(`${run}/public/logs/live_backing.log`)).text();
  const summary = names.find(n => n.endsWith('_errorsummary.log'));
  const lines = (await (await fetch(`${run}/${summary}`)).text()).trim().split('\\n');
  let posted;
  try {
    await fetch(`${root}/api/v1/pushes`, {method: 'POST', headers: {'Content-Type': 'application/json'}, body: '{}'});
    posted = 'answered';
  } catch (error) {
    posted = 'refused by the browser';
  }
  return {names, log, failed: lines.map(l => JSON.parse(l)).filter(l => l.action === 'test_result'), posted};
}"""


async def test_treeherder_s_ui_reads_a_failed_run_s_artifacts_log_and_errorsummary_from_its_own_origin(
    start_stack: Any, tmp_path: Path, browser: Browser
) -> None:
    infrax = await start_stack(public_read=True)
    seen = await collecting(infrax)
    repo = tmp_path / "sample"
    make_sample_repo(repo)
    broken = break_one_test(repo, 2)
    pushed = await infrax["jobmaster"].post("/api/v1/pushes", json={"repository": str(repo), "revision": broken})
    assert (await job_in(infrax["jobmaster"], pushed.json()["id"], "completed", "failed", "exception"))["state"] == (
        "failed"
    )

    async def failed_announced() -> bool:  # the relay publishes it after the job's end is stored
        return any(exchange.endswith("task-failed") for exchange, _, _ in seen)

    await wait_for(failed_announced, 20, "the failed run's task-failed message")
    (task_id,) = {body["status"]["taskId"] for exchange, _, body in seen if exchange.endswith("task-failed")}

    page = await (await browser.new_context()).new_page()
    with treeherder_origin() as origin:
        await page.goto(f"{origin}/jobs")
        read = await page.evaluate(READS, [infrax.stack.urls["jobmaster"], task_id])
    assert "public/logs/live_backing.log" in read["names"]
    assert any("TEST-UNEXPECTED-FAIL | tests/test_2.py" in line for line in read["log"].splitlines())
    assert [line["test"] for line in read["failed"]] == ["tests/test_2.py::Test2::test_mul_2"]
    assert read["posted"] == "refused by the browser"
    assert len((await infrax["jobmaster"].get("/api/v1/jobs")).json()) == 1  # the POST changed nothing
