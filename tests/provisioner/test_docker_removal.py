"""How the Docker provider takes an engine's answers to a removal, without an engine."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import docker.errors
import pytest
import requests

from infrax.provisioner.providers.base import ProviderError
from infrax.provisioner.providers.docker import REMOVE_ATTEMPTS, DockerProvider

STOPPING = (
    "cannot remove container e9c1 as it could not be stopped: sending SIGKILL to container e9c1: "
    "container state improper: stopped"
)


def _refusal(status: int, explanation: str) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = status
    return docker.errors.APIError("refused", response=response, explanation=explanation)


class Engine:
    """Answers removals from a script: an exception to raise, or None for a removal done."""

    def __init__(self, *answers: Exception | None) -> None:
        self.answers = list(answers)
        self.removals: list[str] = []

    def remove_container(self, name: str, **_: Any) -> None:
        self.removals.append(name)
        answer = self.answers.pop(0)
        if answer is not None:
            raise answer


def _provider(engine: Engine) -> DockerProvider:
    provider = DockerProvider("docker", options={"socket_dir": "/nonexistent/infrax-test"})
    provider._docker = SimpleNamespace(api=engine)  # type: ignore[assignment]
    return provider


async def test_a_container_podman_could_not_kill_while_it_stopped_is_removed_on_asking_again() -> None:
    engine = Engine(_refusal(500, STOPPING), _refusal(500, STOPPING), None)

    await _provider(engine).destroy("c1")

    assert engine.removals == ["infrax-c1"] * 3


async def test_a_removal_refused_for_another_reason_is_an_error_at_once() -> None:
    engine = Engine(_refusal(500, "device or resource busy"), None)

    with pytest.raises(ProviderError, match="device or resource busy"):
        await _provider(engine).destroy("c1")
    assert engine.removals == ["infrax-c1"]


async def test_a_container_that_never_stops_stopping_is_an_error_after_the_last_attempt() -> None:
    engine = Engine(*[_refusal(500, STOPPING)] * REMOVE_ATTEMPTS)

    with pytest.raises(ProviderError, match="state improper"):
        await _provider(engine).destroy("c1")
    assert len(engine.removals) == REMOVE_ATTEMPTS


@pytest.mark.parametrize(
    "answer", [docker.errors.NotFound("gone"), _refusal(409, "removal of container c1 is already in progress")]
)
async def test_a_container_gone_or_going_is_removed(answer: Exception) -> None:
    engine = Engine(answer)

    await _provider(engine).destroy("c1")

    assert engine.removals == ["infrax-c1"]
