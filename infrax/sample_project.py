"""A small real git project whose tests are spread over several files: the demo's and the tests' subject."""

from __future__ import annotations

import subprocess
from pathlib import Path

BOOTSTRAP = """#!/bin/sh
# Run the partition's test files in the checkout of the pushed revision infrax starts it in.
set -e
repository=""; revision=""
while [ $# -gt 0 ]; do
  case "$1" in
    --repository=*) repository="${1#--repository=}"; shift ;;
    --revision=*) revision="${1#--revision=}"; shift ;;
    *) break ;;
  esac
done
echo "running $# test files at ${revision}"
exec python3 run_tests.py "$@"
"""

BUILD = """#!/bin/sh
# Build the pushed revision (infrax starts it in its checkout): a source tarball, the artifact
# the test partitions fetch.
set -e
repository=""; revision=""
for argument in "$@"; do
  case "$argument" in
    --repository=*) repository="${argument#--repository=}" ;;
    --revision=*) revision="${argument#--revision=}" ;;
  esac
done
mkdir -p "$INFRAX_ARTIFACTS_DIR/dist"
git archive --format=tar.gz --prefix=calc/ -o "$INFRAX_ARTIFACTS_DIR/dist/calc.tar.gz" "$revision"
echo "built dist/calc.tar.gz at ${revision}"
"""

TEST_BUILD = """#!/bin/sh
# Run the partition's test files against the build it fetched.
set -e
tar xzf "$INFRAX_FETCHES_DIR/dist/calc.tar.gz"
cd calc
echo "running $# test files against the build"
exec python3 run_tests.py "$@"
"""

RUN_TESTS = '''"""Runs the given tests with unittest: test files, or `file::Class::test` ids (what
infrax passes when it runs only the tests that failed); writes a JUnit report into
$INFRAX_REPORT_DIR when there is one; exits non-zero when any test fails."""
import os
import sys
import time
import unittest
from xml.etree import ElementTree


def dotted(argument):
    path, _, inner = argument.partition("::")
    return ".".join([path[: -len(".py")].replace("/", ".")] + [p for p in inner.split("::") if p])


class Recorded(unittest.TextTestResult):
    """Each test's outcome and time, for the report."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cases = []
        self.started = time.monotonic()

    def startTest(self, test):
        self.started = time.monotonic()
        super().startTest(test)

    def note(self, test, outcome, detail=""):
        self.cases.append((test.id(), outcome, detail, time.monotonic() - self.started))

    def addSuccess(self, test):
        super().addSuccess(test)
        self.note(test, "passed")

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self.note(test, "failure", self._exc_info_to_string(err, test))

    def addError(self, test, err):
        super().addError(test, err)
        self.note(test, "error", self._exc_info_to_string(err, test))

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self.note(test, "skipped", reason)


def write_report(cases, path):
    suite = ElementTree.Element("testsuite", name="unittest", tests=str(len(cases)))
    for ident, outcome, detail, seconds in cases:
        classname, _, name = ident.rpartition(".")
        case = ElementTree.SubElement(suite, "testcase", classname=classname, name=name, time=f"{seconds:.6f}")
        if outcome != "passed":
            lines = detail.strip().splitlines() or [outcome]
            ElementTree.SubElement(case, outcome, message=lines[-1]).text = detail
    ElementTree.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)


suite = unittest.TestSuite(unittest.defaultTestLoader.loadTestsFromName(dotted(a)) for a in sys.argv[1:])
result = unittest.TextTestRunner(stream=sys.stdout, verbosity=2, resultclass=Recorded).run(suite)
if os.environ.get("INFRAX_REPORT_DIR"):
    write_report(result.cases, os.path.join(os.environ["INFRAX_REPORT_DIR"], "unittest.xml"))
sys.exit(0 if result.wasSuccessful() else 1)
'''

CALC = """def add(a, b):
    return a + b


def mul(a, b):
    return a * b
"""

CONFIG = """version: 1
project: sample
tasks:
  - name: unit
    containerTag: linux_x86_64
    bootstrapper: ci/bootstrap.sh
    bootstrapperArguments: ["--repository={repository}", "--revision={revision}"]
    files: "tests/test_*.py"
    partitions: 3
    maxRunTime: 120
"""


# The demo's shape, Firefox CI's: one build, then test partitions on what it built.
BUILD_THEN_TEST_CONFIG = """version: 1
project: sample
tasks:
  - name: build
    containerTag: linux_x86_64
    bootstrapper: ci/build.sh
    bootstrapperArguments: ["--repository={repository}", "--revision={revision}"]
    maxRunTime: 120
  - name: unit
    containerTag: linux_x86_64
    bootstrapper: ci/test.sh
    files: "tests/test_*.py"
    partitions: 3
    dependsOn: [build]
    fetches: [{task: build, artifact: dist/calc.tar.gz}]
    maxRunTime: 120
"""


def _test_file(n: int) -> str:
    return f"""import unittest

from calc import add, mul


class Test{n}(unittest.TestCase):
    def test_add_{n}(self):
        self.assertEqual(add({n}, 1), {n + 1})

    def test_mul_{n}(self):
        self.assertEqual(mul({n}, 2), {n * 2})
"""


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def make_sample_repo(path: Path, test_files: int = 6, *, build: bool = False) -> str:
    """Create the repository with one commit whose tests pass; return that commit's id. With
    `build`, its tasks are a build and test partitions that fetch what it built."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "--quiet", "--initial-branch=main")
    git(path, "config", "user.email", "demo@infrax.invalid")
    git(path, "config", "user.name", "infrax demo")
    (path / "ci").mkdir(exist_ok=True)
    scripts = {"build.sh": BUILD, "test.sh": TEST_BUILD} if build else {"bootstrap.sh": BOOTSTRAP}
    for name, text in scripts.items():
        (path / "ci" / name).write_text(text)
        (path / "ci" / name).chmod(0o755)
    (path / "run_tests.py").write_text(RUN_TESTS)
    (path / "calc.py").write_text(CALC)
    (path / ".infrax.yml").write_text(BUILD_THEN_TEST_CONFIG if build else CONFIG)
    (path / "tests").mkdir(exist_ok=True)
    (path / "tests" / "__init__.py").write_text("")
    for n in range(1, test_files + 1):
        (path / "tests" / f"test_{n}.py").write_text(_test_file(n))
    git(path, "add", "-A")
    git(path, "commit", "--quiet", "-m", "calc with tests")
    return git(path, "rev-parse", "HEAD")


def break_one_test(path: Path, n: int = 2) -> str:
    """Commit a change that makes exactly one test of tests/test_{n}.py fail; return the commit id."""
    test = path / "tests" / f"test_{n}.py"
    test.write_text(test.read_text().replace(f"mul({n}, 2), {n * 2}", f"mul({n}, 2), {n * 2 + 1}"))
    git(path, "commit", "--quiet", "-am", f"break test_mul_{n}")
    return git(path, "rev-parse", "HEAD")


def make_one_test_intermittent(path: Path, n: int = 3) -> str:
    """Commit a change that makes one test of tests/test_{n}.py fail on a partition's first run
    only (`INFRAX_RUN` 0), as an intermittent does; return the commit id."""
    test = path / "tests" / f"test_{n}.py"
    flaky = f'mul({n}, 2), {n * 2} + (os.environ.get("INFRAX_RUN") == "0")'
    test.write_text("import os\n" + test.read_text().replace(f"mul({n}, 2), {n * 2}", flaky))
    git(path, "commit", "--quiet", "-am", f"make test_mul_{n} intermittent")
    return git(path, "rev-parse", "HEAD")
