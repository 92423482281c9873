"""What an agent is asked to run: the run's request (its environment, a trusted push's secrets,
the files or failed tests), its bootstrapper fetched from the job master with the run's own token
and passed inline, and the project's secrets cut out of what the run prints."""

from __future__ import annotations

import base64
from collections import OrderedDict
from typing import Any

import httpx

from infrax.agent.protocol import MAX_INLINE_BOOTSTRAPPER
from infrax.http import ServiceError
from infrax.model import PartitionOffer
from infrax.retry import outage, retry

BOOTSTRAPPERS_KEPT = 64  # at most 64 × 512 KiB in memory


class Unavailable(Exception):
    """An infrax component a run needs stayed unreachable past the outage deadline."""


class RunRequests:
    def __init__(
        self,
        jobmaster: httpx.AsyncClient | None,
        jobmaster_url: str | None,
        installation_url: str | None,
        project_secrets: dict[str, dict[str, str]],
        outage_deadline: float,
    ) -> None:
        # With a client of the job master: its bootstrappers are fetched here and passed inline, so an
        # agent needs no route to any infrax endpoint (a container may have no network at all).
        self.jobmaster = jobmaster
        # Bootstrappers under this URL are the job master's: fetched with the run's token. So are
        # jobs' files under the installation's public URL (the job master hands those out behind a
        # proxy): they are fetched from the job master's own address, never through the proxy.
        self.jobmaster_url = jobmaster_url.rstrip("/") + "/" if jobmaster_url else None
        self.public_jobs_url = f"{installation_url.rstrip('/')}/api/v1/jobs/" if installation_url else None
        # Given to runs of trusted pushes only (`offer.trusted`); every value is cut out of every log.
        self.project_secrets = project_secrets
        self.outage_deadline = outage_deadline
        self._bootstrappers: OrderedDict[tuple[str, str], bytes] = OrderedDict()  # (job, URL) -> a revision's file

    def redacted(self, project: str, text: str) -> str:
        """Output with the project's secret values replaced (also from runs that did not get them: a
        secret printed by another way is still one). A value split across two output messages is not
        caught; agents send whole lines where they can."""
        for value in self.project_secrets.get(project, {}).values():
            if value and value in text:
                text = text.replace(value, "[redacted]")
        return text

    async def _jobmasters_file(self, url: str, offer: PartitionOffer) -> bytes | None:
        """A bootstrapper the job master serves, fetched with the run's own token, which reads its
        own job's files and no other's (and kept for that job: a revision's file does not change);
        None when it cannot be had here, or is too large to pass inline: then the agent fetches it
        with the same token."""
        key = (offer.job_id or "", url)
        cached = self._bootstrappers.get(key)
        if cached is not None:
            self._bootstrappers.move_to_end(key)
            return cached
        if self.jobmaster is None or self.jobmaster_url is None or not offer.run_token:
            return None
        jobmaster, path = self.jobmaster, "/" + url[len(self.jobmaster_url) :]
        as_the_run = {"Authorization": f"Bearer {offer.run_token}"}

        async def fetch() -> httpx.Response:
            response = await jobmaster.get(path, headers=as_the_run)
            if response.status_code >= 500 or response.status_code == 429:
                raise ServiceError("jobmaster", response.status_code, response.text[:200])
            return response

        try:
            # The job master down or restarting is waited for: never the task's failure.
            response = await retry(
                fetch,
                on=(httpx.TransportError, ServiceError),
                deadline=self.outage_deadline,
                maximum=2.0,
                during=outage("the job master"),
            )
        except (httpx.TransportError, ServiceError) as error:
            raise Unavailable(f"the job master did not serve bootstrapper {url}: {error}") from error
        if response.status_code != 200 or len(response.content) > MAX_INLINE_BOOTSTRAPPER:
            return None  # the agent's own fetch reports a 404 as the task's own error
        self._bootstrappers[key] = response.content
        while len(self._bootstrappers) > BOOTSTRAPPERS_KEPT:
            self._bootstrappers.popitem(last=False)
        return response.content

    def _at_the_jobmaster(self, url: str) -> str:
        """A job's file named under the public URL, as the job master's own address names it."""
        if self.jobmaster_url and self.public_jobs_url and url.startswith(self.public_jobs_url):
            return f"{self.jobmaster_url}api/v1/jobs/{url[len(self.public_jobs_url) :]}"
        return url

    async def build(self, offer: PartitionOffer) -> dict[str, Any]:
        # The project's secrets for a trusted push, over the task's env; the run variables over both.
        secrets = self.project_secrets.get(offer.project, {}) if offer.trusted else {}
        env = {
            **offer.env,
            **secrets,
            "INFRAX_PARTITION_ID": offer.partition_id,
            "INFRAX_TASK_ID": offer.task_id,
            "INFRAX_TASK_NAME": offer.task_name,
            "INFRAX_CHUNK": str(offer.index),
            "INFRAX_TOTAL_CHUNKS": str(offer.count),
            "INFRAX_RUN": str(offer.run),
            "INFRAX_RERUN_OF_FAILURES": "1" if offer.tests is not None else "",
            "INFRAX_PROJECT": offer.project,
            "INFRAX_REVISION": offer.revision or "",
        }
        served: dict[str, Any] = {}
        bootstrapper = self._at_the_jobmaster(offer.bootstrapper)
        if self.jobmaster_url and bootstrapper.startswith(self.jobmaster_url):
            content = await self._jobmasters_file(bootstrapper, offer)
            if content is not None:
                served = {"bootstrapperContent": base64.b64encode(content).decode()}
            elif offer.run_token:
                served = {"bootstrapperToken": offer.run_token}  # for the job master only, never another host
        return {
            **served,
            "type": "run",
            "runId": offer.run_id,
            "bootstrapper": bootstrapper,
            "bootstrapperArguments": offer.bootstrapper_arguments,
            # A re-run of failures runs what failed: those tests (or files) as the arguments.
            "files": offer.files if offer.tests is None else offer.tests,
            "env": env,
            "maxRunTime": offer.max_run_time,
        }
