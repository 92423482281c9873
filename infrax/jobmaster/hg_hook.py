"""A Mercurial `changegroup` hook that tells the job master about a push.

Standard library only, so it runs under whatever Python the hg server uses. In the
repository's `.hg/hgrc`:

    [hooks]
    changegroup.infrax = python3 /path/to/hg_hook.py http://jobmaster:7310 [repository-name]

(or `python3 -m infrax.jobmaster.hg_hook ...` where infrax is installed). The repository is
named by its path (hg runs hooks in the repository's root) unless a name is given: use the
same name or URL as in the job master's `hg_poll`. It authenticates with the token in
INFRAX_TOKEN, or in the file INFRAX_TOKEN_FILE names (one with scope `jobmaster:hg-push` is
enough: `infrax token create --scope jobmaster:hg-push --name hg-hook`). It posts
`{repository, node: $HG_NODE, nodeLast: $HG_NODE_LAST, user, date, source: $HG_SOURCE}` to
`POST /api/v1/hg/pushes`. A job master that cannot be reached never fails the push: the
hook warns, and polling (if configured) picks the push up.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
import time
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not os.environ.get("HG_NODE"):
        print("usage: hg_hook.py JOBMASTER_URL [REPOSITORY] (as a changegroup hook)", file=sys.stderr)
        return 0
    url = argv[1].rstrip("/") + "/api/v1/hg/pushes"
    body = {
        "repository": argv[2] if len(argv) > 2 else os.getcwd(),
        "node": os.environ["HG_NODE"],
        "nodeLast": os.environ.get("HG_NODE_LAST") or os.environ["HG_NODE"],
        "user": os.environ.get("REMOTE_USER") or _user(),
        "date": int(time.time()),
        "source": os.environ.get("HG_SOURCE"),
    }
    headers = {"Content-Type": "application/json"}
    token = _token()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        print(
            f"infrax: the job master refused the push ({error.code}): {error.read()[:500].decode(errors='replace')}",
            file=sys.stderr,
        )
        return 0
    except (OSError, ValueError) as error:
        print(f"infrax: could not tell the job master at {url} about the push: {error}", file=sys.stderr)
        return 0
    print(
        f"infrax: push {answer.get('pushId')} of {len(answer.get('changesets') or [])} changesets, "
        f"job {answer.get('jobId')}",
        file=sys.stderr,
    )
    return 0


def _token() -> str | None:
    if os.environ.get("INFRAX_TOKEN"):
        return os.environ["INFRAX_TOKEN"].strip()
    path = os.environ.get("INFRAX_TOKEN_FILE")
    if path:
        try:
            with open(path) as file:
                return file.read().strip()
        except OSError as error:
            print(f"infrax: cannot read INFRAX_TOKEN_FILE {path}: {error}", file=sys.stderr)
    return None


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main(sys.argv))
