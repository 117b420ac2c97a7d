"""The environment the tests run in is exactly requirements/lock.txt.

scripts/test and scripts/audit install the lock into .venv (through scripts/venv); a version
that floated (ml_dtypes 0.6.0 to 0.7.0 turned the suite red once) shows up here first, by
name, instead of as failures elsewhere.
"""

import re
from importlib.metadata import distributions
from pathlib import Path

import tomllib  # the standard library's since 3.11, the lock's Python

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements" / "lock.txt"
FIX = (
    "scripts/test installs requirements/lock.txt into .venv (through scripts/venv); "
    "scripts/lock refreshes the lock (then commit requirements/lock.txt)"
)
PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9][A-Za-z0-9.+!_-]*)")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def normalise(name: str) -> str:
    """PEP 503: lowercase, runs of -, _ and . become one -."""
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_lines() -> list[str]:
    lines = (line.strip() for line in LOCK.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def locked() -> dict[str, str]:
    return {normalise(m[1]): m[2] for m in map(PIN.fullmatch, lock_lines()) if m}


def installed() -> dict[str, str]:
    """Name to version of every distribution the running interpreter sees (the first one
    on sys.path, the one imported), stabcheck itself left out."""
    found: dict[str, str] = {}
    for dist in distributions():
        name = dist.metadata["Name"]
        if name and normalise(name) != "stabcheck":
            found.setdefault(normalise(name), dist.version)
    return found


def direct_requirements() -> set[str]:
    """What scripts/lock resolves: [project].dependencies, the extras it names (stabcheck[...]
    expanded) and requirements/frameworks.txt."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    named = re.search(r"-e '\.\[([\w,-]+)\]'", (ROOT / "scripts" / "lock").read_text())
    assert named, "scripts/lock no longer installs -e '.[extras]'"
    specs = list(project["dependencies"])
    todo = named[1].split(",")
    while todo:
        for spec in extras[todo.pop()]:
            if normalise(NAME.match(spec)[0]) == "stabcheck":  # stabcheck[torch,...]
                todo += spec[spec.index("[") + 1 : spec.index("]")].split(",")
            else:
                specs.append(spec)
    frameworks = (ROOT / "requirements" / "frameworks.txt").read_text().splitlines()
    specs += [line for line in map(str.strip, frameworks) if line and not line.startswith("#")]
    return {normalise(NAME.match(spec)[0]) for spec in specs}


def test_lock_pins_every_line_and_every_direct_requirement():
    lines = lock_lines()
    assert [line for line in lines if not PIN.fullmatch(line)] == [], "not name==version"
    names = [normalise(PIN.fullmatch(line)[1]) for line in lines]
    assert len(names) == len(set(names)), "a distribution is locked twice"
    assert "stabcheck" not in names
    assert {"pip", "setuptools"} <= set(names)
    assert sorted(direct_requirements() - set(names)) == [], f"lost from the lock; {FIX}"


def test_installed_versions_are_the_locked_ones():
    lock, have = locked(), installed()
    problems = [f"missing from the environment: {n}=={lock[n]}" for n in sorted(lock.keys() - have)]
    problems += [
        f"different version: {n}=={have[n]} installed, {lock[n]} locked"
        for n in sorted(lock.keys() & have.keys())
        if have[n] != lock[n]
    ]
    problems += [
        f"installed but not in the lock: {n}=={have[n]}" for n in sorted(have.keys() - lock)
    ]
    assert not problems, "\n".join(
        [f"the environment differs from {LOCK.relative_to(ROOT)} ({FIX}):", *problems]
    )
