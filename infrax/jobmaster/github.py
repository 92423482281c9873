"""GitHub webhooks: signed deliveries become jobs (or cancel them).

`POST /api/v1/github/webhook` takes what a repository's (or organisation's) webhook sends,
as `application/json` or as the form `payload=<json>`. In order:

1. `X-Hub-Signature-256` must be `sha256=<HMAC-SHA256 of the raw body>` under a configured
   secret (`github_secrets`: "owner/name" or "*" -> secret), and the payload's repository must
   be one that secret is for: otherwise 401.
2. The body must be a JSON object (400), `X-GitHub-Event` and `X-GitHub-Delivery` present (400).
3. A delivery id seen before is a no-op (200, `"action": "duplicate"`): GitHub redelivers.
4. `ping` is answered (200); `pull_request` opened, synchronize and reopened run the head
   revision, closed cancels the pull request's unfinished jobs; `push` to a branch runs its
   new head; everything else is acknowledged with 202 and ignored. A new head cancels the
   unfinished jobs of its older heads, as the project's `supersede` in `.infrax.yml` says.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from sqlalchemy import select

from infrax.jobmaster import git
from infrax.jobmaster.checkout import Checkout, Origin
from infrax.jobmaster.mirrors import MirrorError, RevisionMissing
from infrax.jobmaster.policy import RepositoryRefused
from infrax.jobmaster.records import insert_once
from infrax.jobmaster.vcs import Source
from infrax.json_depth import loads_bounded
from infrax.model import utcnow
from infrax.store.tables import deliveries
from infrax.treeherder.github_events import pull_request_message, push_message

if TYPE_CHECKING:
    from infrax.jobmaster.service import JobMaster

MAX_BODY = 25 * 1024 * 1024  # GitHub caps payloads at 25 MB
_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
RUN_ACTIONS = frozenset({"opened", "synchronize", "reopened"})


class WebhookError(Exception):
    """The delivery is refused: `status` is the HTTP status, the message says why."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class WebhookAnswer:
    status: int
    body: dict[str, Any]


def signature(secret: str, body: bytes) -> str:
    """The `X-Hub-Signature-256` value GitHub sends for `body` under `secret`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class GitHubWebhooks:
    def __init__(self, jobmaster: JobMaster, secrets: dict[str, str]) -> None:
        self.jobmaster = jobmaster
        self.secrets = dict(secrets)

    async def handle(self, headers: Any, body: bytes) -> WebhookAnswer:
        """Answer one delivery; `headers` is case-insensitive (Starlette's or httpx's Headers)."""
        if len(body) > MAX_BODY:
            raise WebhookError(413, f"body of {len(body)} bytes is larger than GitHub ever sends ({MAX_BODY})")
        signed_for = self._verify(headers.get("x-hub-signature-256"), body)
        payload = _parse(body, headers.get("content-type", ""))
        event, delivery = headers.get("x-github-event"), headers.get("x-github-delivery")
        if not event:
            raise WebhookError(400, "missing X-GitHub-Event header")
        if not delivery or len(delivery) > 200:
            raise WebhookError(400, "missing or overlong X-GitHub-Delivery header")
        repository = _get(payload, "repository.full_name", str, required=False)
        if "*" not in signed_for and repository not in signed_for:
            raise WebhookError(
                401,
                f"the signature is made with the secret of {', '.join(sorted(signed_for))}, "
                f"not of {repository or 'a delivery without a repository'}",
            )
        async with self.jobmaster.db.begin() as conn:
            seen = (
                (await conn.execute(select(deliveries).where(deliveries.c.delivery_id == delivery))).mappings().first()
            )
        if seen is not None:
            return WebhookAnswer(200, {"action": "duplicate", "delivery": delivery, "jobId": seen["job_id"]})
        answer = await self._dispatch(event, payload, delivery)
        job_ids = [j["id"] for j in answer.body.get("jobs", [])]
        # The same delivery handled twice at once finds its row there: one job per revision anyway.
        await insert_once(
            self.jobmaster.db,
            deliveries,
            {"delivery_id": delivery, "job_id": job_ids[0] if job_ids else None, "received_at": utcnow()},
        )
        return answer

    def _verify(self, given: str | None, body: bytes) -> set[str]:
        """The repositories whose secret signed `body`; 401 unless there is one."""
        if not given:
            raise WebhookError(
                401, "missing X-Hub-Signature-256 header: deliveries must be signed with the webhook's secret"
            )
        if not self.secrets:
            raise WebhookError(401, "no GitHub webhook secret is configured (github_secrets): nothing can be verified")
        if not given.startswith("sha256="):
            raise WebhookError(401, "X-Hub-Signature-256 must be sha256=<hex digest>")
        signed = {name for name, secret in self.secrets.items() if hmac.compare_digest(signature(secret, body), given)}
        if not signed:
            raise WebhookError(401, "X-Hub-Signature-256 does not match the body under any configured webhook secret")
        return signed

    async def _dispatch(self, event: str, payload: dict[str, Any], delivery: str) -> WebhookAnswer:
        if event == "ping":
            return WebhookAnswer(200, {"action": "pong", "zen": payload.get("zen"), "hookId": payload.get("hook_id")})
        if event == "pull_request":
            action = _get(payload, "action", str)
            if action in RUN_ACTIONS:
                return await self._run_pull_request(payload, delivery)
            if action == "closed":
                repository = _get(payload, "repository.full_name", str)
                number = _get(payload, "pull_request.number", int)
                jobs = await self.jobmaster.cancel_pull_request(repository, number)
                return WebhookAnswer(200, {"action": "cancelled", "jobs": [j.wire() for j in jobs]})
            return _ignored(f"pull_request action {action!r} runs nothing")
        if event == "push":
            ref = _get(payload, "ref", str)
            if not ref.startswith("refs/heads/"):
                return _ignored(f"push to {ref}: only pushes to branches run")
            if payload.get("deleted") or _get(payload, "after", str) == git.ZERO:
                return _ignored(f"push deleted {ref}")
            return await self._run_push(payload, delivery)
        return _ignored(f"event {event!r} runs nothing")

    async def _run_pull_request(self, payload: dict[str, Any], delivery: str) -> WebhookAnswer:
        repository = _get(payload, "repository.full_name", str)
        number = _get(payload, "pull_request.number", int)
        head = _sha(_get(payload, "pull_request.head.sha", str), "pull_request.head.sha")
        base_url = self._clone_url(_get(payload, "pull_request.base.repo.clone_url", str))
        head_repo = _get(payload, "pull_request.head.repo", dict, required=False)  # null once a fork is deleted
        head_url = (
            self._clone_url(head_repo["clone_url"])
            if head_repo and isinstance(head_repo.get("clone_url"), str)
            else base_url
        )
        mirror = await self._mirror(base_url, head, head_url)
        changed = None
        for base in (
            _get(payload, "pull_request.base.sha", str, required=False),
            f"refs/heads/{_get(payload, 'pull_request.base.ref', str)}",
        ):
            if base and await git.has_commit(mirror, base):
                fork_point = await git.merge_base(mirror, base, head)
                if fork_point:
                    changed = await git.changed_between(mirror, fork_point, head)
                    break
        if changed is None:
            changed = await git.changed_paths(mirror, head)
        origin = Origin(
            "github",
            repository,
            f"pull/{number}",
            number,
            {
                "event": "pull_request",
                "action": payload["action"],
                "delivery": delivery,
                "user": _get(payload, "sender.login", str, required=False),
                "pullRequest": number,
                "url": _get(payload, "pull_request.html_url", str, required=False),
            },
        )
        # GitHub's own rule: a pull request from a fork gets no secrets (a deleted fork counts as one).
        base_name = _get(payload, "pull_request.base.repo.full_name", str, required=False) or repository
        same_repository = bool(head_repo) and head_repo.get("full_name") == base_name
        checkout = Checkout(
            Source("git", mirror),
            head_url,
            head,
            _get(payload, "pull_request.head.ref", str),
            changed,
            "github",
            origin,
            trusted=same_repository,
            announcements=(pull_request_message(payload, delivery),),
        )
        return await self._start(checkout)

    async def _run_push(self, payload: dict[str, Any], delivery: str) -> WebhookAnswer:
        repository = _get(payload, "repository.full_name", str)
        ref = _get(payload, "ref", str)
        after = _sha(_get(payload, "after", str), "after")
        before = _get(payload, "before", str, required=False)
        url = self._clone_url(_get(payload, "repository.clone_url", str))
        mirror = await self._mirror(url, after, url)
        if before and before != git.ZERO and _SHA.match(before) and await git.has_commit(mirror, before):
            changed = await git.changed_between(mirror, before, after)
        else:  # a new branch: what its head commit changed
            changed = await git.changed_paths(mirror, after)
        origin = Origin(
            "github",
            repository,
            ref,
            None,
            {
                "event": "push",
                "delivery": delivery,
                "user": _get(payload, "pusher.name", str, required=False)
                or _get(payload, "sender.login", str, required=False),
                "compare": payload.get("compare"),
            },
        )
        checkout = Checkout(
            Source("git", mirror),
            url,
            after,
            ref.removeprefix("refs/heads/"),
            changed,
            "github",
            origin,
            announcements=(push_message(payload, delivery),),
        )
        default_branch = _get(payload, "repository.default_branch", str, required=False) or _get(
            payload, "repository.master_branch", str, required=False
        )
        return await self._start(checkout, default_branch)

    def _clone_url(self, url: str) -> str:
        """A payload's clone URL, if the policy allows its host, after the rewrite rules."""
        try:
            self.jobmaster.settings.repositories.check(url)
        except RepositoryRefused as error:
            raise WebhookError(422, str(error)) from error
        return self.jobmaster.mirrors.rewrite(url)

    async def _mirror(self, url: str, revision: str, head_url: str) -> str:
        try:
            return await self.jobmaster.mirrors.git(url, revision, head_url)
        except RevisionMissing as error:
            raise WebhookError(422, str(error)) from error
        except MirrorError as error:
            raise WebhookError(502, str(error)) from error

    async def _start(self, checkout: Checkout, default_branch: str | None = None) -> WebhookAnswer:
        job, created = await self.jobmaster.start_job(checkout)
        answer: dict[str, Any] = {"action": "started" if created else "existing", "jobs": [job.wire()]}
        if checkout.origin is not None:  # the older heads' jobs, now that this one is the head
            superseded = await self.jobmaster.supersede(job, checkout.origin, default_branch)
            if superseded:
                answer["superseded"] = [j.wire() for j in superseded]
        return WebhookAnswer(201 if created else 200, answer)


def _parse(body: bytes, content_type: str) -> dict[str, Any]:
    try:
        text = body.decode()
        if content_type.startswith("application/x-www-form-urlencoded"):
            text = parse_qs(text, strict_parsing=True).get("payload", [""])[0]
        payload = loads_bounded(text)
    except (UnicodeDecodeError, ValueError) as error:
        raise WebhookError(400, f"the body is not a JSON payload (truncated or malformed?): {error}") from None
    if not isinstance(payload, dict):
        raise WebhookError(400, f"the payload must be a JSON object, not {type(payload).__name__}")
    return payload


def _get(payload: dict[str, Any], path: str, kind: type, required: bool = True) -> Any:
    value: Any = payload
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    if value is None and not required:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise WebhookError(400, f"payload field {path} must be a {kind.__name__}, not {type(value).__name__}")
    return value


def _sha(value: str, field: str) -> str:
    if not _SHA.match(value):
        raise WebhookError(400, f"payload field {field} must be a full commit id, not {value[:60]!r}")
    return value


def _ignored(reason: str) -> WebhookAnswer:
    return WebhookAnswer(202, {"action": "ignored", "reason": reason})
