"""The reference project logic: the tasks are described in `.infrax.yml` in the repository.

    version: 1
    project: sample                    # optional; the repository's folder name otherwise
    rerunFailures: 2                   # for every task that does not say: re-runs of what failed
    intermittent: pass                 # a failure that passed when run again: pass (default) or fail
    supersede:                         # a newer head cancels the older heads' unfinished jobs
      pullRequests: true               # (default) a pull request's
      branches: false                  # (default) no branch's; true: every branch but the default; or [names]
    tasks:
      - name: unit-tests
        containerTag: linux_x86_64
        bootstrapper: ci/run-tests.sh  # a path in the repository, or an http(s) URL
        bootstrapperArguments: ["--repository={repository}", "--revision={revision}"]
        files: "tests/**/test_*.py"    # pattern(s) over the revision's tracked files, or a list of files
        allowEmpty: false              # a pattern that matches nothing refuses the push (true: skip the task)
        partitions: 3
        maxRunTime: 600
        dependsOn: [build]             # tasks of this push it waits for (requires: all-completed | all-finished)
        fetches: [{task: build, artifact: dist/app.tar.gz}]   # into $INFRAX_FETCHES_DIR before it starts

`{repository}`, `{revision}`, `{branch}` and `{project}` are replaced in arguments and env values.
Patterns are `.gitignore`'s (see infrax.pathspecs): `**/` is zero or more folders, `!` excludes.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

import yaml
from pydantic import ValidationError

from infrax import pathspecs
from infrax.graph import check_graph
from infrax.jobmaster.plugin import Plan, ProjectLogic, Push, PushRejected
from infrax.model import TaskDefinition

CONFIG_FILE = ".infrax.yml"
PROJECT_DEFAULTS = ("rerunFailures", "intermittent")  # top-level keys every task takes unless it says


class InfraxYamlLogic(ProjectLogic):
    async def plan(self, push: Push) -> Plan:
        raw = await push.read_file(CONFIG_FILE)
        if raw is None:
            raise PushRejected(f"{CONFIG_FILE} not found at revision {push.revision[:12]}")
        try:
            config = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            raise PushRejected(f"{CONFIG_FILE} is not valid YAML: {error}") from error
        if not isinstance(config, dict) or not isinstance(config.get("tasks"), list):
            raise PushRejected(f"{CONFIG_FILE} must be a mapping with a list under 'tasks'")
        if config.get("version", 1) != 1:
            raise PushRejected(f"{CONFIG_FILE} version {config.get('version')!r} is not supported (only 1)")
        project = str(config.get("project") or PurePosixPath(push.repository.rstrip("/")).name.removesuffix(".git"))
        values = {
            "repository": push.repository,
            "revision": push.revision,
            "branch": push.branch or "",
            "project": project,
        }
        all_files: list[str] | None = None
        tasks = []
        for i, entry in enumerate(config["tasks"]):
            if not isinstance(entry, dict):
                raise PushRejected(f"{CONFIG_FILE}: tasks[{i}] must be a mapping")
            entry = dict(entry)
            for key in PROJECT_DEFAULTS:  # the project's word, where the task says nothing
                if key in config and key not in entry:
                    entry[key] = config[key]
            files = entry.get("files", [])
            patterns = [files] if isinstance(files, str) else files
            if isinstance(patterns, list) and any(isinstance(p, str) and pathspecs.is_pattern(p) for p in patterns):
                all_files = all_files if all_files is not None else await push.list_files()
                selection = pathspecs.select([str(p) for p in patterns], all_files)
                if selection.empty and not entry.get("allowEmpty"):
                    shown = ", ".join(repr(p) for p in selection.empty)
                    raise PushRejected(
                        f"{CONFIG_FILE}: tasks[{i}] ({entry.get('name', '?')}): files pattern {shown} matches none "
                        f"of the {len(all_files)} files at {push.revision[:12]} (allowEmpty: true skips the task "
                        "instead)"
                    )
                entry["files"] = selection.files
                entry["filePatterns"] = selection.counts
            else:
                entry["files"] = patterns
            bootstrapper = entry.get("bootstrapper")
            if isinstance(bootstrapper, str) and "://" not in bootstrapper and not bootstrapper.startswith("/"):
                entry["bootstrapper"] = push.file_url(bootstrapper)
            entry["bootstrapperArguments"] = [_fill(a, values) for a in entry.get("bootstrapperArguments", [])]
            entry["env"] = {k: _fill(str(v), values) for k, v in (entry.get("env") or {}).items()}
            try:
                tasks.append(TaskDefinition.model_validate(entry))
            except ValidationError as error:
                problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
                raise PushRejected(f"{CONFIG_FILE}: tasks[{i}] ({entry.get('name', '?')}): {problems}") from error
        if any(t.files for t in tasks):
            sizes = await push.file_sizes()
            for task in tasks:
                if task.file_sizes is None and sizes:
                    task.file_sizes = {f: sizes[f] for f in task.files if f in sizes} or None
        try:
            check_graph(tasks)
        except ValueError as error:
            raise PushRejected(f"{CONFIG_FILE}: {error}") from None
        return Plan(project=project, tasks=tasks, supersede=_supersede(config.get("supersede")))


def _supersede(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    problem = (
        f"{CONFIG_FILE}: supersede must be a mapping of pullRequests (true or false) and branches "
        "(true, false or a list of branch names)"
    )
    if not isinstance(value, dict) or set(value) - {"pullRequests", "branches"}:
        raise PushRejected(problem)
    branches = value.get("branches", False)
    if not isinstance(value.get("pullRequests", True), bool) or not (
        isinstance(branches, bool) or (isinstance(branches, list) and all(isinstance(b, str) for b in branches))
    ):
        raise PushRejected(problem)
    return dict(value)


def _fill(text: Any, values: dict[str, str]) -> str:
    text = str(text)
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text
