"""`infrax token create`, `infrax worker` and `infrax workers list|drain|remove`, as an operator
types them, against `infrax up` with a pool."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from tests.e2e.conftest import start_up, wait_healthy, write_up_config
from tests.e2e.test_cli import infrax
from tests.jobmaster.conftest import wait_for


async def test_an_operator_lists_drains_and_removes_a_worker(tmp_path: Path) -> None:
    config, ports = write_up_config(tmp_path)
    settings = yaml.safe_load(config.read_text())
    settings["providers"] = [{"name": "hardware", "kind": "pool"}]
    settings["container_types"] = [{"name": "linux_x86_64", "tags": ["linux_x86_64"], "providers": ["hardware"]}]
    config.write_text(yaml.safe_dump(settings))
    up = start_up(config, tmp_path / "up.log")
    worker = None
    try:
        await wait_healthy(f"http://127.0.0.1:{ports['provisioner']}", up)
        created = infrax("token", "create", "--scope", "provisioner:worker:hardware", "--name", "rack 7", config=config)
        assert created.returncode == 0, created.stderr
        token_file = tmp_path / "pool.token"
        token_file.write_text(re.search(r"ifx_\S+", created.stdout).group(0))  # type: ignore[union-attr]
        token_file.chmod(0o600)
        command = [sys.executable, "-m", "infrax.cli", "worker", f"http://127.0.0.1:{ports['provisioner']}"]
        command += ["--pool", "hardware", "--token-file", str(token_file), "--name", "rack7-node1"]
        command += ["--capacity", "2", "--data-dir", str(tmp_path / "worker"), "--run-as", "self"]
        worker = subprocess.Popen(command, stdout=(tmp_path / "worker.log").open("ab"), stderr=subprocess.STDOUT)

        async def joined() -> bool:
            return "rack7-node1" in infrax("workers", "list", config=config).stdout

        await wait_for(joined, 30, "the worker in the list")
        listed = infrax("workers", "list", config=config)
        row = next(line for line in listed.stdout.splitlines() if "rack7-node1" in line)
        assert "hardware" in row and "True" in row and "0/2" in row, listed.stdout
        worker_id = infrax("workers", "list", "--json", config=config).stdout.split('"id": "')[1].split('"')[0]

        drained = infrax("workers", "drain", worker_id, config=config)
        assert drained.returncode == 0 and "rack7-node1 of pool hardware drains" in drained.stdout, drained.stderr
        removed = infrax("workers", "remove", worker_id, config=config)
        assert removed.returncode == 0, removed.stderr
        assert "rack7-node1" not in infrax("workers", "list", config=config).stdout
        unknown = infrax("workers", "remove", worker_id, config=config)
        assert unknown.returncode != 0 and "Traceback" not in unknown.stderr and worker_id in unknown.stderr
        worker.wait(timeout=30)  # removed from its pool, it stops
        assert worker.returncode != 0
    finally:
        for process in (worker, up):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=30)
