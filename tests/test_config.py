"""Configuration is checked like input: typed, unknown keys refused, secrets from the environment or a file."""

from __future__ import annotations

from pathlib import Path

import pytest

from infrax.config import ConfigError, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "infrax.yml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("hg_poll_interval: x\n", "hg_poll_interval"),
        ("ports: {scheduler: abc}\n", "ports.scheduler"),
        ("public_read: maybe\n", "public_read"),
        ("providers: [{name: p, kind: process, capacity: lots}]\n", "capacity"),
        ("container_types: [{name: t, tags: [t], max_concurrent: -1}]\n", "max_concurrent"),
        ("no_such_key: 1\n", "no_such_key"),
        ("github_token: {env: INFRAX_TEST_NOT_SET}\n", "INFRAX_TEST_NOT_SET"),
        ("github_token: {file: /nonexistent/token}\n", "/nonexistent/token"),
    ],
)
def test_a_wrong_value_is_refused_naming_it(tmp_path: Path, text: str, names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        load_config(write(tmp_path, text))


def test_secrets_come_from_the_environment_or_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token_file = tmp_path / "github.token"
    token_file.write_text("from-a-file\n")
    monkeypatch.setenv("INFRAX_TEST_DB", "postgresql://infrax:pw@db/infrax")
    config = load_config(
        write(
            tmp_path,
            f"""
db: {{env: INFRAX_TEST_DB}}
github_token: {{file: {token_file}}}
github_secrets: {{"owner/repo": {{file: {token_file}}}, "*": plain}}
hg_poll_interval: "5"
""",
        )
    )
    assert config.db == "postgresql://infrax:pw@db/infrax"
    assert config.github_token == "from-a-file"
    assert config.github_secrets == {"owner/repo": "from-a-file", "*": "plain"}
    assert config.hg_poll_interval == 5.0
