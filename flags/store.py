"""Changing flags: the ramp, and the two places flags live (a YAML file, an Unleash
server). ``shim promote`` and ``shim rollback`` are built on these.

Every change is one read-modify-write (:meth:`FlagStore.update`): the store takes its
lock, reads the flags, asks a plan what to write, writes it and says what it replaced,
so two operators (or an operator and ``shim watch``) never act on a stale read.
"""

from __future__ import annotations

import fcntl
import os
import re
import tempfile
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from shim.base.errors import ConfigError, Problem, ShimError
from shim.base.yamlbounds import read_config_text
from shim.base.yamlfile import Located, load_yaml

from ._admin import UnleashAdminStore
from ._change import (
    DEFAULT_RAMP,
    Change,
    FlagStore,
    Plan,
    Setting,
    changes_from,
    next_rung,
    setting_of,
)
from ._model import KILL_SWITCH, FlagState, TaskFlags, parse_flags

__all__ = [
    "DEFAULT_RAMP",
    "Change",
    "FileStore",
    "FlagStore",
    "Plan",
    "Setting",
    "UnleashAdminStore",
    "changes_from",
    "edit_flags_text",
    "next_rung",
    "setting_of",
]


# -- the file -------------------------------------------------------------------------

_FLOW = re.compile(r"^(?P<head>\s*[^\s#][^#]*?:\s*)\{(?P<body>[^}]*)\}(?P<tail>\s*(#.*)?)$")


_BUDGET = ("shadow_rate", "shadow_tokens_per_hour")


def _flow_body(flags: TaskFlags, setting: Setting) -> str:
    body = f"serve: {setting.serve}, shadow: {setting.shadow}"
    if flags.stickiness != "default":
        body += f", stickiness: {flags.stickiness}"
    for budget in _BUDGET:
        if getattr(flags, budget) is not None:
            body += f", {budget}: {getattr(flags, budget):g}"
    return body


def _spelled(doc: Located, loc: tuple[str, ...]) -> int | None:
    """The line that spells ``loc`` out in this entry; None when it is not written here
    (absent, or borrowed from another entry through an alias or a merge key: editing
    that line would change the other entry)."""
    return None if loc in doc.borrowed else doc.lines.get(loc)


def edit_flags_text(path: str, text: str, changes: Mapping[str, Setting]) -> str:
    """``text`` with these tasks set, comments and layout kept where the file allows."""
    doc = load_yaml(path, text=text)
    state = parse_flags(doc)
    lines = text.splitlines(keepends=True)
    appended: list[str] = []
    for task, setting in changes.items():
        current = state.tasks.get(task, TaskFlags())
        key_line = _spelled(doc, (task,))
        if key_line is None:
            appended.append(f"{task}: {{{_flow_body(current, setting)}}}\n")
            continue
        index = key_line - 1
        flow = _FLOW.match(lines[index].rstrip("\n"))
        if flow is not None:
            end = "\n" if lines[index].endswith("\n") else ""
            lines[index] = f"{flow['head']}{{{_flow_body(current, setting)}}}{flow['tail']}{end}"
            continue
        for field, value in (("serve", setting.serve), ("shadow", setting.shadow)):
            line = _spelled(doc, (task, field))
            if line is not None:
                lines[line - 1] = re.sub(
                    rf"^(\s*{field}:\s*)\d+", rf"\g<1>{value}", lines[line - 1]
                )
            else:
                child = next(
                    (
                        doc.lines[(task, f)]
                        for f in ("serve", "shadow", "stickiness", *_BUDGET, "<<")
                        if _spelled(doc, (task, f)) is not None
                    ),
                    None,
                )
                indent = (
                    re.match(r"\s*", lines[child - 1]).group(0)  # type: ignore[union-attr]
                    if child
                    else " " * (len(lines[index]) - len(lines[index].lstrip()) + 2)
                )
                lines.insert(index + 1, f"{indent}{field}: {value}\n")
                doc = load_yaml(path, text="".join(lines))  # line numbers moved
    if appended and lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    new_text = "".join(lines + appended)
    # Never write what we would not read back as intended.
    check = parse_flags(load_yaml(path, text=new_text))
    for task, setting in changes.items():
        got = check.tasks.get(task)
        want = state.tasks.get(task, TaskFlags()).model_copy(
            update={"serve": setting.serve, "shadow": setting.shadow}
        )
        if got != want:  # the other keys (stickiness, budget) kept as they were
            raise ConfigError(
                [
                    Problem(
                        path,
                        doc.lines.get((task,)),
                        task,
                        "cannot edit this entry safely; set it by hand",
                    )
                ]
            )
    # Nor what changes another task: one that shares these lines through an alias or a
    # merge key (<<) would follow the edit silently.
    moved = sorted(
        t
        for t in {*state.tasks, *check.tasks}
        if t not in changes and state.tasks.get(t) != check.tasks.get(t)
    )
    if moved or check.kill != state.kill:
        others = ", ".join(moved) or KILL_SWITCH
        raise ConfigError(
            [
                Problem(
                    path,
                    doc.lines.get((next(iter(changes)),)),
                    next(iter(changes)),
                    f"editing {', '.join(changes)} here would also change {others} (it "
                    "shares these lines through an alias or a merge key); set them by hand",
                )
            ]
        )
    return new_text


class FileStore:
    """A flags.yaml, edited in place: under a lock, written to a temporary file and
    renamed over the old one, so a reader (or a crash) sees the old file or the new.

    A symlinked flags.yaml stays a link: the file it points at is locked and replaced.
    The lock is ``flock`` on ``.<name>.lock`` beside that file, so every process editing
    it through any path to it takes the same lock.
    """

    def __init__(self, path: str | Path, *, lock_timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.lock_timeout = lock_timeout
        self.description = str(self.path)

    def target(self) -> Path:
        """The file edits replace: ``path`` with every symlink followed."""
        return Path(os.path.realpath(self.path))

    def read(self, tasks: Collection[str] | None = None) -> FlagState:
        """Every task's flags now (without the lock: a snapshot, for showing and for
        planning ahead; :meth:`update` reads again under the lock)."""
        return parse_flags(load_yaml(self.path))

    def update(
        self,
        plan: Plan,
        *,
        tasks: Collection[str] | None = None,
        on_applied: Callable[[list[Change]], None] | None = None,
    ) -> list[Change]:
        """Lock, read, plan, write atomically, tell ``on_applied``, unlock."""
        target = self.target()
        with self._locked(target):
            text = self._text(target)
            state = parse_flags(load_yaml(self.path, text=text))
            changes = changes_from(state, plan(state))
            if changes:
                wanted = {c.task: c.after for c in changes}
                self._replace(target, edit_flags_text(str(self.path), text, wanted))
                if on_applied is not None:
                    on_applied(changes)
        return changes

    def apply(self, changes: Mapping[str, Setting]) -> None:
        """Set these tasks atomically, whatever they were."""
        self.update(lambda _state: changes)

    def _text(self, target: Path) -> str:
        return read_config_text(target, name=str(self.path))

    @contextmanager
    def _locked(self, target: Path) -> Iterator[None]:
        lock_path = target.with_name(f".{target.name}.lock")
        with open(lock_path, "a") as handle:
            deadline = time.monotonic() + self.lock_timeout
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise ShimError(
                            f"{self.path} is locked by another edit (lock file "
                            f"{lock_path}); try again"
                        ) from None
                    time.sleep(0.02)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @staticmethod
    def _replace(target: Path, new_text: str) -> None:
        mode = target.stat().st_mode & 0o777
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(new_text)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(target.parent, os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
