"""One infrax, two projects, both trust levels: a fork's pull request of project A does its worst
from inside its run, and A's next trusted push and B's job are as if it had never run.

The pull request's bootstrapper writes every cache and workspace it finds, reads the store, the
logs and B's files, looks for tokens everywhere it can read, and calls every component's API
with each token it found (and with none). The containers are the default of `infrax up` as root
(`process`, a user of each container's own), and every container type is shared.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from infrax.config import ProviderConfig
from infrax.model import ContainerType
from infrax.store.tables import runs
from tests.jobmaster.conftest import (
    CLONE_URL,
    FAST,
    commit,
    deliver,
    github_config,
    job_in,
    make_hello_world,
    payload,
    with_revision,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching task code to other users needs root")

DEPLOY_KEY = "d3ploy-k3y-of-hello-world"
B_PRIVATE = "projb-private-file-contents"
PR_HEAD = "ec26c3e57ca3a959ca5aad62de7213c562f8c821"
PUSH_HEAD = "6113728f27ae82c7b1a177c8d03f9e96e0adf246"
FORK_URL = "https://github.com/someone-else/Hello-World.git"
# What a trusted build of A runs: it says which revision it built and whether it has the key.
HONEST = """#!/bin/sh
echo "built $(git rev-parse HEAD) app=$(cat src/app.py)"
[ -n "$DEPLOY_KEY" ] && echo "HAS-KEY"
echo "ci-script=honest"
"""
ATTACK = r"""#!/bin/sh
# A fork's pull request: it reaches for everything, and says what it got.
data="__DATA__"; containers="__CONTAINERS__"
echo "attacker uid=$(id -u)"
for target in "$data/infrax.db" "$data/infrax.db-wal" "$data/admin.token" "$data/logs" "$data"; do
  if [ -d "$target" ]; then ls "$target" >/dev/null 2>&1 && echo "GOT $target" || echo "refused $target"
  else cat "$target" >/dev/null 2>&1 && echo "GOT $target" || echo "refused $target"; fi
done
grep -rl "__B_PRIVATE__" "$containers" "$data" 2>/dev/null | sed 's/^/GOT-B-FILE /'
# Every cache and workspace it may write: poison it (a planted build script, packs removed).
for repo in $(find "$containers" /tmp -xdev -name '*.git' -type d -writable 2>/dev/null); do
  echo "poisoned $repo"
  rm -f "$repo"/objects/pack/* 2>/dev/null
  mkdir -p "$repo/hooks" && printf '#!/bin/sh\necho ci-script=attacker\n' > "$repo/hooks/post-checkout"
done
for other in $(ls -d "$containers"/*/*/work 2>/dev/null); do
  touch "$other/planted" 2>/dev/null && echo "GOT-WORKSPACE $other"
done
# Tokens it can find: its environment, and every file it can read where infrax keeps things.
found=$( (env; cat $(find "$containers" "$data" -type f -readable 2>/dev/null) ) 2>/dev/null \
  | grep -ao 'ifx[a-z]*_[A-Za-z0-9_.-]*' | sort -u)
echo "tokens found: $(echo "$found" | grep -c .)"
/usr/bin/python3 - __URLS__ "$found" <<'EOF'
import json, sys, urllib.request
urls, tokens = json.loads(sys.argv[1]), [t for t in sys.argv[2].split() if t]
calls = [("POST", "/api/v1/task-requests", {"project": "projb", "tasks": []}),
         ("GET", "/api/v1/jobs", None), ("GET", "/api/v1/task-requests", None),
         ("POST", "/api/v1/pushes", {"repository": "/tmp"}), ("GET", "/api/v1/containers", None),
         ("POST", "/api/v1/containers/access", {"runIds": []})]
for url in urls:
    for method, path, body in calls:
        for token in tokens + ["", "ifx" + "_guessed"]:
            request = urllib.request.Request(url + path, method=method,
                data=None if body is None else json.dumps(body).encode(),
                headers={"Content-Type": "application/json", **({"Authorization": "Bearer " + token} if token else {})})
            try:
                code = urllib.request.urlopen(request, timeout=5).status
            except urllib.error.HTTPError as error:
                code = error.code
            except OSError as error:
                code = "unreachable"
            print("API", code, method, url + path)
# Every agent listening on this host's loopback (another container's, its own): a run with each secret.
import socket
ports = {int(u.rsplit(":", 1)[1]) for u in urls}
listening = set()
for line in open("/proc/net/tcp").read().splitlines()[1:]:
    local, state = line.split()[1], line.split()[3]
    if state == "0A" and local.startswith("0100007F:"):
        listening.add(int(local.split(":")[1], 16))
for port in sorted(listening - ports):
    for secret in tokens + ["", "guess"]:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as agent:
                agent.sendall(json.dumps({"type": "hello", "protocol": 1, "secret": secret}).encode() + b"\n")
                agent.sendall(json.dumps({"type": "run", "runId": "pwn", "bootstrapper": "/bin/id",
                                          "maxRunTime": 5}).encode() + b"\n")
                answer = agent.recv(65536).decode(errors="replace").split("\n")[0]
        except OSError:
            continue
        kind = (json.loads(answer) if answer.startswith("{") else {}).get("type")
        print("AGENT", "ACCEPTED" if kind in ("welcome", "accepted") else "refused", port)
EOF
echo "ci-script=attacker"
"""


@pytest.fixture
def open_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="infrax-pr-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def _log_of(infrax, job: dict) -> str:  # type: ignore[no-untyped-def]
    request = (await infrax["scheduler"].get(f"/api/v1/task-requests/{job['requestId']}")).json()
    partition = request["tasks"][0]["partitions"][0]
    return (await infrax["executioner"].get(f"/api/v1/runs/{partition['id']}-{partition['run']}/log")).text


def _project_b(path: Path) -> str:
    path.mkdir(parents=True)
    (path / "ci").mkdir()
    (path / "ci" / "run.sh").write_text('#!/bin/sh\necho "b built $(git rev-parse HEAD) $(cat private.txt)"\n')
    (path / "private.txt").write_text(B_PRIVATE + "\n")
    (path / ".infrax.yml").write_text(
        "version: 1\nproject: projb\ntasks:\n  - name: unit\n    containerTag: linux_x86_64\n"
        "    bootstrapper: ci/run.sh\n    files: [private.txt]\n"
    )
    for args in (["init", "-q", "--initial-branch=main"], ["add", "-A"]):
        subprocess.run(["git", "-C", str(path), *args], check=True)
    subprocess.run(
        ["git", "-C", str(path), "-c", "user.email=b@x.invalid", "-c", "user.name=b", "commit", "-qm", "b"], check=True
    )
    return subprocess.run(
        ["git", "-C", str(path), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()


def _provider(kind: str, request: pytest.FixtureRequest) -> ProviderConfig:
    if kind == "docker":  # real Podman containers, no network (the default)
        options = {
            "url": request.getfixturevalue("docker_url"),
            "image": request.getfixturevalue("agent_image"),
            "owner": f"test-{uuid.uuid4().hex[:10]}",
        }
        return ProviderConfig("docker", kind="docker", options=options)
    return ProviderConfig("process", options={"run_as": kind.removeprefix("process-")})


def _provider_name(kind: str) -> str:
    return "docker" if kind == "docker" else "process"


@pytest.mark.parametrize("kind", ["process-container", "process-nobody", "docker"])
async def test_a_pull_request_reaches_nothing_beyond_itself(
    start_stack, tmp_path: Path, open_dir: Path, github_api, kind: str, request: pytest.FixtureRequest
) -> None:
    repo = tmp_path / "Hello-World"
    make_hello_world(repo)
    config = FAST.replace('    paths: ["src", "ci", ".infrax.yml"]\n', "")  # whatever changed, it runs
    trusted_1 = commit(repo, {"ci/run.sh": HONEST, ".infrax.yml": config, "src/app.py": "v1\n"}, "trusted 1")
    repo_b = tmp_path / "projb"
    b_revision = _project_b(repo_b)
    infrax = await start_stack(
        data_dir=open_dir / "data",
        providers=[_provider(kind, request)],  # process-container: the default as root
        container_types=[
            ContainerType(
                name="linux_x86_64", tags=["linux_x86_64"], max_concurrent=2, providers=[_provider_name(kind)]
            )
        ],
        **github_config(
            repo,
            github_api,
            project_secrets={"hello-world": {"DEPLOY_KEY": DEPLOY_KEY}},
            url_rewrites=[
                {"prefix": CLONE_URL, "replacement": str(repo)},
                {"prefix": FORK_URL, "replacement": str(repo)},
            ],
        ),
    )
    jobmaster = infrax["jobmaster"]
    data = infrax.stack.config.data_dir
    urls = sorted(infrax.stack.urls.values())

    # 1. A trusted push of A (a branch push), on a fresh container.
    pushed = await deliver(
        jobmaster, "push", with_revision(payload("push_with-new-branch.payload.json"), PUSH_HEAD, trusted_1), "d-1"
    )
    first = await job_in(jobmaster, pushed.json()["jobs"][0]["id"], "completed", "failed", "exception")
    assert first["state"] == "completed" and f"built {trusted_1} app=v1" in await _log_of(infrax, first)

    # 2. A fork's pull request of A: the attack.
    attack = (
        ATTACK.replace("__DATA__", str(data))
        # Where its container keeps things: the containers' folders on this host, or /work in its own.
        .replace("__CONTAINERS__", "/work" if kind == "docker" else str(infrax.stack.config.containers_root))
        .replace("__B_PRIVATE__", f'{B_PRIVATE[:6]}""{B_PRIVATE[6:]}')  # not itself a match
        .replace("__URLS__", "'" + json.dumps(urls) + "'")
    )
    subprocess.run(["git", "-C", str(repo), "checkout", "-q", "-b", "fork", trusted_1], check=True)
    hostile = commit(repo, {"ci/run.sh": attack, "src/app.py": "from the fork\n"}, "a fork's change")
    subprocess.run(["git", "-C", str(repo), "checkout", "-q", "master"], check=True)
    body = json.loads(with_revision(payload("pull_request_opened.payload.json"), PR_HEAD, hostile))
    body["pull_request"]["head"]["repo"]["full_name"] = "someone-else/Hello-World"
    body["pull_request"]["head"]["repo"]["clone_url"] = FORK_URL
    opened = await deliver(jobmaster, "pull_request", json.dumps(body).encode(), "d-2")
    assert opened.status_code == 201, opened.text
    fork_job = await job_in(jobmaster, opened.json()["jobs"][0]["id"], "completed", "failed", "exception")
    assert fork_job["details"]["trusted"] is False
    fork_log = await _log_of(infrax, fork_job)
    assert "ci-script=attacker" in fork_log, fork_log

    # 3. A push of B, then A's next trusted push.
    pushed_b = await jobmaster.post("/api/v1/pushes", json={"repository": str(repo_b)})
    assert pushed_b.status_code == 201, pushed_b.text
    b_job = await job_in(jobmaster, pushed_b.json()["id"], "completed", "failed", "exception")
    trusted_2 = commit(repo, {"src/app.py": "v2\n"}, "trusted 2")
    pushed = await deliver(
        jobmaster, "push", with_revision(payload("push_with-new-branch.payload.json"), PUSH_HEAD, trusted_2), "d-3"
    )
    second = await job_in(jobmaster, pushed.json()["jobs"][0]["id"], "completed", "failed", "exception")

    # What the pull request got: nothing of the store, the logs, B, any token, any API, any other workspace.
    assert "GOT" not in fork_log, fork_log
    assert fork_log.count("\nrefused ") == 5 and "tokens found: 0" in fork_log, fork_log
    api_codes = {line.split()[1] for line in fork_log.splitlines() if line.startswith("API ")}
    if kind == "docker":  # no network at all
        assert api_codes == {"unreachable"}, fork_log
    else:  # 404: no such route on that component
        assert "401" in api_codes and api_codes <= {"401", "404"}, fork_log
    assert DEPLOY_KEY not in fork_log and "HAS-KEY" not in fork_log
    # No agent took a run from it: its own nor the trusted container's (process containers listen on
    # this host's loopback; a Podman container's agent is on a socket file outside it).
    assert "AGENT ACCEPTED" not in fork_log, fork_log
    assert kind == "docker" or "AGENT refused" in fork_log, fork_log
    # A's next trusted push built exactly its own revision, with its own script and its key.
    second_log = await _log_of(infrax, second)
    assert second["state"] == "completed", second_log
    assert f"built {trusted_2} app=v2" in second_log and "HAS-KEY" in second_log, second_log
    assert "ci-script=honest" in second_log and "attacker" not in second_log
    # B's job is untouched: its own revision, its own file.
    b_log = await _log_of(infrax, b_job)
    assert b_job["state"] == "completed" and f"b built {b_revision} {B_PRIVATE}" in b_log, b_log
    # No container ran runs of two tenants.
    assert infrax.stack.db is not None
    async with infrax.stack.db.begin() as conn:
        assignments = [row.assignment for row in (await conn.execute(select(runs.c.assignment))).all()]
    tenants: dict[str, set[tuple[str, bool]]] = {}
    for assignment in assignments:
        offer = assignment["offer"]
        tenants.setdefault(assignment["containerId"], set()).add((offer["project"], offer["trusted"]))
    assert len(assignments) == 4 and all(len(t) == 1 for t in tenants.values()), tenants
