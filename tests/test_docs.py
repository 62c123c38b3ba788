"""The documentation: every code example of the README and of docs/ runs on its own, in a fresh
temporary folder, and leaves nothing behind; the site builds with warnings as errors; the
README stays a front page whose commands are the ones CI runs."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import List

import pytest
from conftest import RAY_LOOPBACK_ENV

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README] + sorted(DOCS.glob("*.md"))
# Languages of the blocks that run: Python, and shell commands (with this environment's
# mmap-ninja and python first on PATH).
RUN = ("python", "bash")
# Blocks of set-up commands (``console``): shown, never run by a test, since they make virtual
# environments and install packages; CI runs the README's two of them (see below).
SETUP = "console"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", flags=re.S | re.M)


@dataclass
class Block:
    page: Path
    line: int
    language: str
    code: str

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(pages=PAGES) -> List[Block]:
    found = []
    for page in pages:
        text = page.read_text()
        for match in FENCE.finditer(text):
            found.append(Block(page, text.count("\n", 0, match.start()) + 1, match.group(1), match.group(2)))
    return found


def runnable() -> List[Block]:
    return [block for block in blocks() if block.language in RUN]


def test_every_block_says_its_language():
    """A block without a language, or of one no test knows, would go untested."""
    unknown = [f"{block.name} ({block.language or 'none'})" for block in blocks()
               if block.language not in RUN + (SETUP, "text")]
    assert unknown == []


def test_setup_blocks_only_install():
    """The blocks that are not run only make a virtual environment and install into it."""
    allowed = re.compile(r"^(python3 -m venv \.venv|bash tools/install( \S+)?|(\.venv/bin/)?pip install .+|"
                         r"\.venv/bin/python -m pip (install .+|check)|"
                         r"\.venv/bin/python (examples/quickstart\.py|-m pytest)|"
                         r"\.venv/bin/mkdocs (build|serve)( .*)?|python tools/refresh_lock\.py( .*)?)$")
    for block in blocks():
        if block.language == SETUP:
            for command in re.split(r" && |\n", block.code.strip()):
                command = command.split("  #")[0].strip()
                assert allowed.match(command), f"{block.name}: {command!r} is not a set-up command"


def files_under(folder: Path) -> set:
    return {path.relative_to(folder) for path in folder.rglob("*")}


@pytest.mark.parametrize("block", runnable(), ids=lambda block: block.name)
def test_example_runs_alone_and_leaves_nothing_behind(block, tmp_path, request):
    work = tmp_path / "work"
    work.mkdir()
    # the block's temporary folder, short: Ray puts Unix sockets of at most 107 bytes' path there
    scratch = Path(tempfile.mkdtemp(prefix="doc-"))
    request.addfinalizer(lambda: shutil.rmtree(scratch, ignore_errors=True))
    before = files_under(ROOT / "docs") | {Path(name) for name in os.listdir(ROOT)}
    env = dict(os.environ, TMPDIR=str(scratch), MPLBACKEND="Agg",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    for name, value in RAY_LOOPBACK_ENV.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    env.pop("PYTHONPATH", None)
    if "s3://" in block.code:  # the examples of object storage read and write a real S3-compatible server
        server = request.getfixturevalue("s3_server")
        server.new_bucket("datasets")
        env.update(server.environment(), MMAP_NINJA_CACHE=str(scratch / "cache"))
    if block.language == "python":
        command = [sys.executable, "-c", block.code]
    else:
        command = ["bash", "-euo", "pipefail", "-c", block.code]
    proc = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{block.name} failed:\n{proc.stdout}\n{proc.stderr}"
    after = files_under(ROOT / "docs") | {Path(name) for name in os.listdir(ROOT)}
    assert after == before, f"{block.name} wrote outside its folder: {sorted(map(str, after - before))}"


def test_examples_cover_every_kind_of_map_in_the_readme():
    code = "\n".join(block.code for block in blocks([README]) if block.language == "python")
    for name in ("RaggedMmap", "StringsMmap", "np_ninja", "Wrapped", "open_existing", "from_indexable", "keys="):
        assert name in code


def test_readme_is_a_front_page():
    """About 300 lines; the reference lives in docs/, and every link into it resolves."""
    text = README.read_text()
    assert text.count("\n") <= 320
    links = re.findall(r"\]\(((?:docs|benchmarks|examples)/[^)#]+)(?:#[^)]*)?\)", text)
    assert any(link.startswith("docs/") for link in links)
    for link in links:
        assert (ROOT / link).exists(), link


def test_readme_commands_are_the_ones_ci_runs():
    """The quickstart's two commands: the demo, and the tests that .ci/run runs as written."""
    text = README.read_text()
    quickstart = text[text.index("## Quickstart"):text.index("\n## ", text.index("## Quickstart") + 1)]
    commands = [block.code.strip() for block in blocks([README]) if block.language == SETUP
                and block.code.strip() in quickstart]
    assert len(commands) == 2
    demo, tests = commands
    assert demo.endswith(".venv/bin/python examples/quickstart.py")
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests in ci.splitlines(), f"{tests!r} is not a line of .ci/run"


def test_site_builds_with_warnings_as_errors(tmp_path):
    """mkdocs --strict turns every warning (a broken link, a page missing from the nav, a
    docstring it cannot render) into an error."""
    mkdocs = Path(sys.executable).parent / "mkdocs"
    proc = subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in ("RaggedMmap", "from_lists", "StringsMmap", "from_ndarray", "open_existing", "ShardedMmap",
                 "DistributedSampler", "from_arrow", "to_mmap", "MmapNinjaDatasink"):
        assert name in api, name
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in DOCS.glob("*.md"):
        assert f": {page.name}" in nav, f"{page.name} is not in the nav of mkdocs.yml"


def test_install_script_builds_with_the_build_requirements_of_pyproject():
    """tools/install installs the build's requirements before building without isolation:
    the same packages pyproject.toml names."""
    import tomllib

    required = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    names = {re.split(r"[<>=!~ \[]", requirement)[0].lower() for requirement in required}
    script = (ROOT / "tools" / "install").read_text()
    line = next(line for line in script.splitlines() if "pip install --constraint constraints.txt" in line
                and "--editable" not in line)
    assert {word.lower() for word in shlex.split(line)[6:]} == names


def test_performance_page_shows_the_latest_benchmark_tables():
    """benchmarks/bench_batches.py writes its tables into docs/performance.md; the page shows
    those of the committed benchmarks/RESULTS.md."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from bench_batches import MARKERS, PERFORMANCE_PAGE, page_section
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text()
    report = results.split("\n\n", 2)[2].split("\n\n![median", 1)[0]
    text = PERFORMANCE_PAGE.read_text()
    shown = text[text.index(MARKERS[0]) + len(MARKERS[0]):text.index(MARKERS[1])].strip()
    assert shown == page_section(report).strip()


def test_constraints_pin_every_package_of_the_test_environment():
    """constraints.txt holds every package this environment has (the test extra and what it
    needs, and the build's requirements), at the version installed: nothing the tests import
    is left for pip to choose."""
    from importlib import metadata

    from packaging.utils import canonicalize_name
    from packaging.version import Version

    pinned = {canonicalize_name(name): Version(version) for name, version in
              re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", (ROOT / "constraints.txt").read_text(), flags=re.M)}
    unpinned, other = [], []
    # the environment's own packages (other tests put other environments on sys.path)
    site = list(dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]))
    for dist in metadata.distributions(path=site):
        name = canonicalize_name(dist.metadata["Name"])
        if name in ("mmap-ninja", "pip"):
            continue
        version = Version(dist.version)
        if name not in pinned:
            unpinned.append(name)
        elif version.public != pinned[name].public:  # a local build (torch's +cpu) is the same release
            other.append(f"{name} {version} (pinned {pinned[name]})")
    assert unpinned == [] and other == []
