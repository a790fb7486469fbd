"""git, run only against the project's own repository.

A results folder from a cloned repository can be laid out as a git directory (HEAD, config,
objects/) whose config names commands (core.fsmonitor, ...): git's own discovery, run inside it,
would obey that config. So the repository is found by looking for `.git` at or above the project
folder (a `.git` can never be committed, so it is the user's), and git is run there with discovery
bounded, bare repositories refused, no filesystem monitor, hooks or pager, and literal pathspecs.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path


def git_toplevel(root: Path) -> Path | None:
    """The working tree holding the project root: the nearest folder at or above it with a `.git`.

    Found by looking, not by git's discovery: a results folder from a cloned repository can be laid
    out as a bare repository (HEAD, config, objects/) whose config names commands, and git run
    inside it would obey that config. `.git` itself can never be committed, so it is the user's."""
    for folder in (root, *root.parents):
        if os.path.lexists(folder / ".git"):
            return folder
    return None


def git(top: Path, *args: str, input: bytes | None = None, text: bool = True,
        timeout: float = 20) -> subprocess.CompletedProcess:
    """git on the project's own repository only: no discovery above it, no bare repositories, no
    filesystem monitor, hooks or pager, pathspecs taken literally, no GIT_* variable from outside."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_CEILING_DIRECTORIES=str(top.parent), GIT_LITERAL_PATHSPECS="1", GIT_OPTIONAL_LOCKS="0",
               GIT_TERMINAL_PROMPT="0", GIT_PAGER="cat")
    return subprocess.run(["git", "-C", str(top), "-c", "safe.bareRepository=explicit", "-c", "core.fsmonitor=false",
                           "-c", "core.hooksPath=/dev/null", *args],
                          capture_output=True, text=text if input is None else False, timeout=timeout, env=env,
                          input=input, stdin=None if input is not None else subprocess.DEVNULL)
