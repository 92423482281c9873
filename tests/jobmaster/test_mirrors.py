"""Clone URLs rewritten like git's insteadOf, fetched into bare mirrors only as far as needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from infrax.jobmaster import git
from infrax.jobmaster.mirrors import MirrorError, Mirrors, RevisionMissing, UrlRewrite, check_url, rewrite
from tests.jobmaster.conftest import CLONE_URL, commit, make_hello_world


def test_the_longest_matching_prefix_is_rewritten() -> None:
    rules = [
        UrlRewrite("https://github.com/", "/srv/github/"),
        UrlRewrite("https://github.com/Codertocat/", "/srv/codertocat/"),
    ]
    assert rewrite(CLONE_URL, rules) == "/srv/codertocat/Hello-World.git"
    assert rewrite("https://github.com/octo/x.git", rules) == "/srv/github/octo/x.git"
    assert rewrite("https://gitlab.example/x.git", rules) == "https://gitlab.example/x.git"


@pytest.mark.parametrize(
    "url", ["ext::sh -c touch% /tmp/pwned", "--upload-pack=touch /tmp/pwned", "relative/path", "fd::3", "-o@host:path"]
)
def test_urls_that_are_options_helpers_or_relative_are_never_fetched(url: str) -> None:
    with pytest.raises(MirrorError, match="cannot fetch from"):
        check_url(url)


async def test_a_mirror_is_bare_and_fetched_only_when_a_revision_is_missing(tmp_path: Path) -> None:
    repo = tmp_path / "Hello-World"
    ids = make_hello_world(repo)
    mirrors = Mirrors(tmp_path / "mirrors", [UrlRewrite(CLONE_URL, str(repo))])
    url = mirrors.rewrite(CLONE_URL)

    mirror = await mirrors.git(url, ids["pr2"])
    assert (await git.git(mirror, "rev-parse", "--is-bare-repository")).strip() == b"true"
    assert await git.has_commit(mirror, ids["pr2"]) and await git.has_commit(mirror, ids["docs"])
    newer = commit(repo, {"src/app.py": "print('newer')\n"}, "newer")
    assert not await git.has_commit(mirror, newer)
    assert await mirrors.git(url, ids["code"]) == mirror  # already there: nothing fetched
    assert not await git.has_commit(mirror, newer)
    assert await mirrors.git(url, newer) == mirror  # missing: fetched into the same mirror
    assert await git.has_commit(mirror, newer)
    with pytest.raises(RevisionMissing, match=f"revision {'0' * 39}1 is not in"):
        await mirrors.git(url, "0" * 39 + "1")
    with pytest.raises(MirrorError, match="cannot fetch"):
        await mirrors.git(str(tmp_path / "nowhere"), ids["code"])
