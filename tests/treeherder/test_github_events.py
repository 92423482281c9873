"""GitHub pushes and pull requests reach Treeherder the way taskcluster-github's do: a message on
its exchanges, valid against its schemas, with what Treeherder's push ingestion reads."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from infrax.bus import Message, topics
from tests.conftest import shared_path
from tests.jobmaster.conftest import (
    GITHUB_REPOSITORY,
    deliver,
    github_config,
    make_hello_world,
    payload,
    wait_for,
    with_revision,
)
from tests.jobmaster.test_github import PR_HEAD, PUSH_HEAD


def _resolved(node: Any) -> Any:
    """Taskcluster's YAML dialect as plain JSON Schema. The github service's constants file is not
    in ../shared: `message-version` is the queue's (1), and a keyword naming any other is left out (so
    the check is of structure, required fields and types, not of those patterns)."""
    if isinstance(node, dict):
        if set(node) == {"$const"}:
            return {"type": "integer", "enum": [1]} if node["$const"] == "message-version" else None
        return {k: r for k, v in node.items() if k != "$schema" and (r := _resolved(v)) is not None}
    if isinstance(node, list):
        return [_resolved(v) for v in node]
    return node


@pytest.fixture(scope="module")
def github_schemas() -> dict[str, jsonschema.Draft6Validator]:
    folder = shared_path("reference", "taskcluster", "github-schemas")
    return {
        exchange: jsonschema.Draft6Validator(_resolved(yaml.safe_load((folder / f"{name}.yml").read_text())))
        for exchange, name in (
            (topics.GITHUB_PUSH, "github-push-message"),
            (topics.GITHUB_PULL_REQUEST, "github-pull-request-message"),
        )
    }


async def test_a_push_and_a_pull_request_are_announced_as_taskcluster_github_does(
    start_stack: Any, tmp_path: Path, github_api: Any, github_schemas: dict[str, jsonschema.Draft6Validator]
) -> None:
    repo = tmp_path / "Hello-World"
    ids = make_hello_world(repo)
    infrax = await start_stack(**github_config(repo, github_api))
    seen: list[Message] = []

    async def collect(message: Message) -> None:
        seen.append(message)

    for exchange in (topics.GITHUB_PUSH, topics.GITHUB_PULL_REQUEST):  # as Treeherder binds them: `#`
        await infrax.stack.bus.subscribe(f"test-{exchange.rsplit('/', 1)[1]}", exchange, ["#"], collect)
    jobmaster = infrax["jobmaster"]
    new_branch = with_revision(payload("push_with-new-branch.payload.json"), PUSH_HEAD, ids["code"])
    pushed = await deliver(jobmaster, "push", new_branch, "d-push")
    assert pushed.status_code == 201, pushed.text
    opened = await deliver(
        jobmaster,
        "pull_request",
        with_revision(payload("pull_request_opened.payload.json"), PR_HEAD, ids["pr1"]),
        "d-opened",
    )
    assert opened.status_code == 201, opened.text

    async def both() -> bool:
        return len(seen) == 2

    await wait_for(both, 10, "a push and a pull-request message")
    push, pull = sorted(seen, key=lambda m: m.exchange != topics.GITHUB_PUSH)
    for message in (push, pull):
        github_schemas[message.exchange].validate(message.body)
    owner, name = GITHUB_REPOSITORY.split("/")
    assert push.routing_key == f"primary.{owner}.{name}" and pull.routing_key == f"primary.{owner}.{name}.opened"
    # What Treeherder's GithubPushTransformer reads: the repository URL it matches, branch, base, head.
    details = push.body["details"]
    assert details["event.head.repo.url"].replace(".git", "") == f"https://github.com/{GITHUB_REPOSITORY}"
    assert details["event.base.repo.branch"] == "master" and details["event.head.sha"] == ids["code"]
    assert details["event.base.sha"] == "0" * 40  # a new branch: the commits come from the body
    assert push.body["body"]["commits"][-1]["id"] == ids["code"]
    # ... and its GithubPullRequestTransformer: the base repository and the pull request's number.
    details = pull.body["details"]
    assert details["event.base.repo.url"].replace(".git", "") == f"https://github.com/{GITHUB_REPOSITORY}"
    assert details["event.pullNumber"] == "2" and details["event.head.sha"] == ids["pr1"]
    assert json.loads(json.dumps(pull.body))["tasks_for"] == "github-pull-request"

    # The same revision again (its job exists) is announced again, for a Treeherder that missed
    # it (Treeherder stores a push once); a new one is too.
    push_again = with_revision(payload("push_with-new-branch.payload.json"), PUSH_HEAD, ids["code"])
    assert (await deliver(jobmaster, "push", push_again, "d-again")).status_code == 200

    async def third() -> bool:
        return len(seen) >= 3

    await wait_for(third, 10, "the repeated push's message")
    docs = with_revision(payload("push_with-new-branch.payload.json"), PUSH_HEAD, ids["docs"])
    assert (await deliver(jobmaster, "push", docs, "d-docs")).status_code == 201

    async def fourth() -> bool:
        return len(seen) >= 4

    await wait_for(fourth, 10, "the new revision's push message")
    assert [m.body["details"]["event.head.sha"] for m in seen if m.exchange == topics.GITHUB_PUSH] == [
        ids["code"],
        ids["code"],
        ids["docs"],
    ]
