"""Per-project logic as plug-ins: the entry point group, and the example that decides in code."""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

import pytest

from infrax.jobmaster import git
from infrax.jobmaster.examples import SkipDocsOnlyLogic
from infrax.jobmaster.plugin import ENTRY_POINT_GROUP, Push, PushRejected, load_logic
from infrax.jobmaster.reference import InfraxYamlLogic
from infrax.sample_project import make_sample_repo
from tests.jobmaster.conftest import commit, job_in


def test_the_shipped_logics_are_registered_entry_points() -> None:
    registered = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    assert registered.get("reference") == "infrax.jobmaster.reference:InfraxYamlLogic"
    assert registered.get("skip-docs") == "infrax.jobmaster.examples:SkipDocsOnlyLogic"
    assert isinstance(load_logic("skip-docs"), SkipDocsOnlyLogic)


def test_logic_is_loaded_by_name_or_import_path_and_bad_names_say_what_is_installed() -> None:
    assert isinstance(load_logic("reference"), InfraxYamlLogic)
    assert isinstance(load_logic("infrax.jobmaster.examples:SkipDocsOnlyLogic"), SkipDocsOnlyLogic)
    with pytest.raises(ValueError, match=r"no job master logic 'nope'; installed: .*reference"):
        load_logic("nope")
    with pytest.raises(ValueError, match="is not a ProjectLogic"):
        load_logic("infrax.jobmaster.plugin:ENTRY_POINT_GROUP")
    with pytest.raises(ValueError, match="cannot load job master logic"):
        load_logic("infrax.no_such_module:Logic")


async def _push(repo: Path, revision: str) -> Push:
    return Push(
        repository=str(repo),
        revision=revision,
        branch="main",
        source="cli",
        changed_paths=await git.changed_paths(str(repo), revision),
        read_file=lambda path: git.read_file(str(repo), revision, path),
        list_files=lambda: git.list_files(str(repo), revision),
        file_url=lambda path: f"http://jobmaster.invalid/files/{path}",
    )


async def test_skip_docs_runs_the_tests_in_code_and_nothing_for_a_docs_only_push(tmp_path: Path) -> None:
    repo = tmp_path / "sample"
    first = make_sample_repo(repo)
    docs = commit(repo, {"README.md": "# sample\n", "docs/usage.rst": "Usage\n=====\n"}, "docs only")
    empty = tmp_path / "empty"
    empty.mkdir()
    await git.git(str(empty), "init", "--quiet")
    await git.git(str(empty), "config", "user.email", "a@infrax.invalid")
    await git.git(str(empty), "config", "user.name", "a")
    no_tests = commit(empty, {"docs/index.md": "x\n", "main.py": "x\n"}, "no tests")

    logic = SkipDocsOnlyLogic()
    planned = await logic.plan(await _push(repo, first))
    skipped = await logic.plan(await _push(repo, docs))

    assert planned.project == "sample" and [t.name for t in planned.tasks] == ["tests"]
    task = planned.tasks[0]
    assert task.files == [f"tests/test_{n}.py" for n in range(1, 7)] and task.partitions == 3
    assert task.bootstrapper == "http://jobmaster.invalid/files/ci/bootstrap.sh"
    assert task.bootstrapper_arguments == [f"--repository={repo}", f"--revision={first}"]
    assert skipped.tasks == []
    with pytest.raises(PushRejected, match="no tests/test_"):
        await logic.plan(await _push(empty, no_tests))


async def test_a_job_master_with_the_example_logic_completes_a_docs_only_push_at_once(
    start_stack, tmp_path: Path
) -> None:
    infrax = await start_stack()
    infrax.stack.services["jobmaster"].logic = load_logic("infrax.jobmaster.examples:SkipDocsOnlyLogic")
    repo = tmp_path / "sample"
    code = make_sample_repo(repo)
    docs = commit(repo, {"docs/usage.md": "# Usage\n"}, "docs only")

    ran = (await infrax["jobmaster"].post("/api/v1/pushes", json={"repository": str(repo), "revision": code})).json()
    skipped = await infrax["jobmaster"].post("/api/v1/pushes", json={"repository": str(repo), "revision": docs})

    assert skipped.status_code == 201
    done = await job_in(infrax["jobmaster"], skipped.json()["id"], "completed")
    assert done["message"] == "no tasks to run" and done["requestId"] is None
    finished = await job_in(infrax["jobmaster"], ran["id"], "completed", "failed", "exception")
    assert finished["state"] == "completed" and [t["name"] for t in finished["tasks"]] == ["tests"]
