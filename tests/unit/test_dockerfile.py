"""compose/Dockerfile and .dockerignore: the image's Python install works from its own context.

No Docker engine here, so the build is replayed: exactly the files the Dockerfile's COPY lines take from the
repository (less what .dockerignore keeps out of the context) go into a temporary directory, `pip install`
installs that directory into a fresh venv as the Dockerfile's RUN line does, and the console script runs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "compose" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


def copy_sources(dockerfile: str) -> list[str]:
    """The context paths the Dockerfile's COPY lines take (every source of each line; none from another stage)."""
    sources = []
    for line in dockerfile.splitlines():
        words = line.split()
        if not words or words[0].upper() != "COPY":
            continue
        assert not any(word.startswith("--from") for word in words), line
        sources += [word for word in words[1:-1] if not word.startswith("--")]
    return sources


def ignore_patterns(text: str) -> list[str]:
    """.dockerignore's patterns, comments and blank lines dropped (no `!` exceptions are used)."""
    patterns = [line.strip().rstrip("/") for line in text.splitlines()]
    patterns = [pattern for pattern in patterns if pattern and not pattern.startswith("#")]
    assert not any(pattern.startswith("!") for pattern in patterns)
    return patterns


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regular expression over a whole context path: `*` within a name,
    `?` one character of a name, `**/` any number of directories (none too), `**` anything."""
    regex = ""
    index = 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            regex, index = regex + "(?:.*/)?", index + 3
        elif pattern.startswith("**", index):
            regex, index = regex + ".*", index + 2
        else:
            char = pattern[index]
            regex += {"*": "[^/]*", "?": "[^/]"}.get(char, re.escape(char))
            index += 1
    return re.compile(regex)


def ignored(relative: str, patterns: list[str]) -> bool:
    """Whether Docker leaves context path `relative` out of the context: a pattern (anchored at the
    context's root) matches it or a directory above it."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: index + 1]) for index in range(len(parts))]
    regexes = [pattern_regex(pattern) for pattern in patterns]
    return any(regex.fullmatch(prefix) for regex in regexes for prefix in prefixes)


def build_context(destination: Path) -> list[str]:
    """Copy the Dockerfile's COPY set from the repository into `destination`, as the image's /app holds it."""
    patterns = ignore_patterns(DOCKERIGNORE.read_text())
    sources = copy_sources(DOCKERFILE.read_text())
    for source in sources:
        path = ROOT / source
        assert path.exists(), f"COPY {source}: not in the repository"
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            if ignored(relative, patterns):
                continue
            target = destination / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, target)
    return sources


def test_the_copy_set_holds_every_package_pyproject_lists():
    sources = {source.rstrip("/") for source in copy_sources(DOCKERFILE.read_text())}
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    top_level = {package.split(".")[0] for package in packages}
    assert top_level <= sources, f"not copied: {sorted(top_level - sources)}"
    assert {"pyproject.toml", "README.md"} <= sources  # the build reads both (readme = "README.md")


def test_dockerignore_keeps_local_and_large_things_out_of_the_context():
    patterns = ignore_patterns(DOCKERIGNORE.read_text())
    for path in (".venv/bin/python", ".git/HEAD", "compose/kafka-local/target/libs/kafka.jar",
                 "compose/kafka-local/run/9092/data/meta.properties", "runs/run-1/epochs.ndjson",
                 "ppo_telemetry/__pycache__/cli.cpython-311.pyc", "__pycache__/x.pyc",
                 "ppo_telemetry.egg-info/PKG-INFO", "secrets/broker.pem", "compose/secrets/drift.toml",
                 "compose/apicurio-local/target/apicurio-registry-3.3.3/quarkus-run.jar",
                 "compose/apicurio-local/run/8081/registry.log"):
        assert ignored(path, patterns), path
    for path in ("ppo_telemetry/cli.py", "avro_schemas/epoch_summary_v1.1.avsc", "kafka_io/__init__.py",
                 "pyproject.toml", "README.md", "compose/Dockerfile", "producer/envs/__init__.py"):
        assert not ignored(path, patterns), path


def test_the_matcher_follows_dockers_rules():
    assert ignored("a/b/__pycache__/c.pyc", ["**/__pycache__"])
    assert ignored("runs/x", ["runs"]) and not ignored("src/runs/x", ["runs"])  # anchored at the root
    assert not ignored("compose/kafka-local/pom.xml", ["compose/kafka-local/target"])


def test_the_package_installs_from_exactly_the_copy_set_and_its_console_script_runs(tmp_path):
    app = tmp_path / "app"
    build_context(app)
    assert not (app / "tests").exists() and not (app / ".venv").exists()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # the Dockerfile's RUN line: a real install, build isolation and dependencies included
    install = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", str(app)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    environment = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    result = subprocess.run([str(venv / "bin" / "ppo-telemetry"), "--help"], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path, env=environment)
    assert result.returncode == 0, result.stderr
    assert "consume" in result.stdout and "broker" in result.stdout
    # every package imports from the install, not from the repository
    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import avro_schemas, kafka_io, consumers, producer, producer.envs, ppo_telemetry.cli; "
         "import ppo_telemetry; print(ppo_telemetry.__file__)"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=environment,
    )
    assert probe.returncode == 0, probe.stderr
    assert str(venv) in probe.stdout
    # the Avro schemas are package data: the codec finds them in the install
    schemas = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "from importlib.resources import files; print(len(list(files('avro_schemas').glob('*.avsc'))))"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=environment,
    )
    assert schemas.returncode == 0 and int(schemas.stdout) >= 4, schemas.stderr
