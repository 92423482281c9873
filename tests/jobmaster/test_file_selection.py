"""`files` patterns in `.infrax.yml`: `.gitignore`'s rules over the revision's tracked files, and
a pattern that selects nothing refused (or, with `allowEmpty`, its task skipped), never a green job."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from infrax import pathspecs
from infrax.jobmaster import git
from infrax.jobmaster.hg import hg_command
from infrax.jobmaster.plugin import Push, PushRejected
from infrax.jobmaster.reference import InfraxYamlLogic
from infrax.jobmaster.vcs import Source
from infrax.model import ContainerType, PlanRequest
from infrax.optimizer.planner import Planner
from tests.jobmaster.conftest import commit
from tests.jobmaster.test_plugins import _push

LAYOUT = {
    "pkg/tests/test_top.py": "",  # the folder the fnmatch globs missed: `**/` as zero folders
    "pkg/a/tests/test_one.py": "",
    "pkg/a/b/tests/test_two.py": "",
    "pkg/a/tests/helper.py": "",
    "pkg/slow/tests/test_slow.py": "",
    "other/tests/test_elsewhere.py": "",
    "ci/run.sh": "#!/bin/sh\n",
}


def config(files: str, extra: str = "") -> str:
    return (
        "version: 1\ntasks:\n  - name: unit\n    containerTag: linux\n    bootstrapper: ci/run.sh\n"
        f"    files: {files}\n{extra}"
    )


async def repo_with(tmp_path: Path, infrax_yml: str) -> tuple[Path, str]:
    repo = tmp_path / "repo"
    repo.mkdir()
    await git.git(str(repo), "init", "--quiet")
    await git.git(str(repo), "config", "user.email", "a@infrax.invalid")
    await git.git(str(repo), "config", "user.name", "a")
    revision = commit(repo, {**LAYOUT, ".infrax.yml": infrax_yml}, "layout")
    (repo / "untracked" / "tests").mkdir(parents=True)
    (repo / "untracked" / "tests" / "test_not_in_git.py").write_text("")  # in the work tree, never committed
    return repo, revision


def test_a_double_star_slash_is_zero_or_more_folders_including_the_top() -> None:
    files = ["tests/test_a.py", "x/tests/test_b.py", "x/y/z/tests/test_c.py", "tests/helper.py"]

    assert pathspecs.select(["**/tests/test_*.py"], files).files == files[:3]
    assert pathspecs.select(["x/**/test_*.py"], files).files == ["x/tests/test_b.py", "x/y/z/tests/test_c.py"]
    assert pathspecs.matches("setup.py", "**/*.py") and pathspecs.matches("a/b/setup.py", "**/*.py")
    assert not pathspecs.matches("tests/sub/a.py", "tests/*.py")  # `*` stays within its folder


def test_each_pattern_is_counted_and_a_negation_takes_back() -> None:
    files = ["t/test_a.py", "t/slow/test_b.py", "t/test_c.py"]

    selection = pathspecs.select(["t/**/test_*.py", "!t/slow/**", "docs/*.md"], files)

    assert selection.files == ["t/test_a.py", "t/test_c.py"]
    assert selection.counts == {"t/**/test_*.py": 3, "!t/slow/**": 1, "docs/*.md": 0}
    assert selection.empty == ["docs/*.md"]


async def test_patterns_select_from_the_revisions_tracked_files_at_every_depth(tmp_path: Path) -> None:
    repo, revision = await repo_with(tmp_path, config('["pkg/**/tests/test_*.py", "!pkg/slow/**"]'))

    plan = await InfraxYamlLogic().plan(await _push(repo, revision))

    task = plan.tasks[0]
    assert sorted(task.files) == ["pkg/a/b/tests/test_two.py", "pkg/a/tests/test_one.py", "pkg/tests/test_top.py"]
    assert task.file_patterns == {"pkg/**/tests/test_*.py": 4, "!pkg/slow/**": 1}
    explained = Planner().plan(
        PlanRequest(tasks=[task], container_types=[ContainerType(name="linux", tags=["linux"])]), explain=True
    )
    assert "files: 3 selected by pattern ('pkg/**/tests/test_*.py' 4, '!pkg/slow/**' 1)" in (
        explained.tasks[0].explanation or []
    )


async def test_a_pattern_that_matches_nothing_refuses_the_push_naming_it(tmp_path: Path) -> None:
    repo, revision = await repo_with(tmp_path, config('["pkg/**/test_*.py", "untracked/**/test_*.py"]'))

    with pytest.raises(
        PushRejected, match=r"tasks\[0\] \(unit\): files pattern 'untracked/\*\*/test_\*\.py' matches none"
    ):
        await InfraxYamlLogic().plan(await _push(repo, revision))


async def test_with_allow_empty_a_task_whose_patterns_take_nothing_is_skipped_saying_why(tmp_path: Path) -> None:
    repo, revision = await repo_with(tmp_path, config('"docs/**/*.rst"', "    allowEmpty: true\n"))

    plan = await InfraxYamlLogic().plan(await _push(repo, revision))
    planned = Planner().plan(
        PlanRequest(tasks=plan.tasks, container_types=[ContainerType(name="linux", tags=["linux"])])
    )

    assert plan.tasks[0].files == [] and plan.tasks[0].file_patterns == {"docs/**/*.rst": 0}
    assert planned.tasks[0].skipped and planned.tasks[0].partitions == []
    assert planned.tasks[0].reason == "skipped: its file patterns took no file ('docs/**/*.rst' 0; allowEmpty)"


async def test_a_tasks_files_carry_their_sizes_at_the_revision_for_the_optimizer(tmp_path: Path) -> None:
    repo, revision = await repo_with(tmp_path, config('"**/tests/test_*.py"'))
    revision = commit(repo, {"pkg/slow/tests/test_slow.py": "def test_slow():\n    pass\n" * 40}, "grows")
    push = await _push(repo, revision)
    push = Push(**{**push.__dict__, "file_sizes": lambda: git.file_sizes(str(repo), revision)})

    plan = await InfraxYamlLogic().plan(push)

    sizes = plan.tasks[0].file_sizes
    assert sizes is not None and set(sizes) == set(plan.tasks[0].files)
    assert sizes["pkg/slow/tests/test_slow.py"] == len("def test_slow():\n    pass\n" * 40)
    assert sizes["pkg/a/tests/test_one.py"] == 0


@pytest.mark.parametrize("vcs", ["git", "hg"])
async def test_file_sizes_come_from_the_revision_not_the_work_tree(tmp_path: Path, vcs: str) -> None:
    repo = tmp_path / vcs
    repo.mkdir()
    (repo / "d").mkdir()
    (repo / "a.txt").write_text("hello\n")
    (repo / "d" / "b c.txt").write_text("hi\n")
    if vcs == "hg":
        run = [hg_command(), "--cwd", str(repo)]
        subprocess.run([*run, "init"], check=True)
        subprocess.run([*run, "commit", "-A", "-q", "-m", "x", "-u", "t <t@infrax.invalid>"], check=True)
    else:
        subprocess.run(["git", "init", "-q", str(repo)], check=True)
        subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
        subprocess.run(
            ["git", "-C", str(repo), "-c", "user.email=t@infrax.invalid", "-c", "user.name=t", "commit", "-qm", "x"],
            check=True,
        )
    (repo / "a.txt").write_text("changed in the work tree, not committed\n")
    source = Source.detect(str(repo))
    revision = await source.resolve("tip" if vcs == "hg" else "HEAD")
    assert await source.file_sizes(revision) == {"a.txt": 6, "d/b c.txt": 3}
