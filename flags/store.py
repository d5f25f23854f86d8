"""Changing flags: the ramp, and the two places flags live (a YAML file, an Unleash
server). ``shim promote`` and ``shim rollback`` are built on these."""

from __future__ import annotations

import fcntl
import os
import re
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from shim.base.errors import ConfigError, Problem, ShimError
from shim.base.yamlfile import load_yaml

from ._model import FlagState, TaskFlags, parse_flags, stage_of
from ._rules import serve_flag, shadow_flag

__all__ = ["DEFAULT_RAMP", "FileStore", "FlagStore", "Setting", "UnleashAdminStore", "next_rung"]

#: Serve percentages a task climbs through after shadowing at 100 %.
DEFAULT_RAMP: tuple[int, ...] = (1, 5, 25, 50, 100)


@dataclass(frozen=True, slots=True)
class Setting:
    """A task's two percentages."""

    serve: int
    shadow: int

    @property
    def stage(self) -> str:
        """``off``, ``shadow``, ``canary`` or ``live``."""
        return stage_of(self.serve, self.shadow)

    def as_record(self) -> dict[str, Any]:
        """For ``shim.promote`` / ``shim.rollback`` records."""
        return {"serve": self.serve, "shadow": self.shadow, "stage": self.stage}


def next_rung(current: Setting, ramp: Sequence[int] = DEFAULT_RAMP) -> Setting | None:
    """The next step up: shadow at 100 %, then each serve percentage of ``ramp``.
    None when the task is already live."""
    if current.serve == 0 and current.shadow < 100:
        return Setting(0, 100)
    for serve in ramp:
        if serve > current.serve:
            return Setting(serve, current.shadow)
    return None


class FlagStore(Protocol):
    """Where ``shim promote`` / ``shim rollback`` read and write flags."""

    description: str

    def read(self) -> FlagState:
        """Every task's flags now."""
        ...

    def apply(self, changes: Mapping[str, Setting]) -> None:
        """Set these tasks' percentages (all or nothing, as far as the store allows)."""
        ...


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


def edit_flags_text(path: str, text: str, changes: Mapping[str, Setting]) -> str:
    """``text`` with these tasks set, comments and layout kept where the file allows."""
    doc = load_yaml(path, text=text)
    state = parse_flags(doc)
    lines = text.splitlines(keepends=True)
    appended: list[str] = []
    for task, setting in changes.items():
        current = state.tasks.get(task, TaskFlags())
        key_line = doc.lines.get((task,))
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
            line = doc.lines.get((task, field))
            if line is not None:
                lines[line - 1] = re.sub(
                    rf"^(\s*{field}:\s*)\d+", rf"\g<1>{value}", lines[line - 1]
                )
            else:
                child = next(
                    (
                        doc.lines[(task, f)]
                        for f in ("serve", "shadow", "stickiness", *_BUDGET)
                        if (task, f) in doc.lines
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
    return new_text


class FileStore:
    """A flags.yaml, edited in place: under a lock, written to a temporary file and
    renamed over the old one, so a reader (or a crash) sees the old file or the new."""

    def __init__(self, path: str | Path, *, lock_timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.lock_timeout = lock_timeout
        self.description = str(self.path)

    def read(self) -> FlagState:
        """Every task's flags now."""
        return parse_flags(load_yaml(self.path))

    @contextmanager
    def _locked(self) -> Iterator[None]:
        lock_path = self.path.with_name(f".{self.path.name}.lock")
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

    def apply(self, changes: Mapping[str, Setting]) -> None:
        """Set these tasks atomically."""
        with self._locked():
            text = self.path.read_text(encoding="utf-8")
            new_text = edit_flags_text(str(self.path), text, changes)
            mode = self.path.stat().st_mode & 0o777
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    out.write(new_text)
                    out.flush()
                    os.fsync(out.fileno())
                os.chmod(tmp, mode)
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            dir_fd = os.open(self.path.parent, os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


# -- the Unleash server ---------------------------------------------------------------


class UnleashAdminStore:
    """Flags on an Unleash server, changed through its Admin API.

    ``url`` is the server's base (``http://host:4242``; a trailing ``/api`` is accepted).
    Missing flags are created with one flexibleRollout strategy (``groupId`` = flag
    name); 0 % disables the flag in ``environment``, more enables it.
    """

    def __init__(
        self,
        url: str,
        admin_token: str,
        *,
        environment: str = "development",
        project: str = "default",
        http: httpx.Client | None = None,
    ) -> None:
        base = url.rstrip("/").removesuffix("/api")
        self.description = f"Unleash {base} ({environment})"
        self.environment = environment
        self._project = f"/api/admin/projects/{project}/features"
        self._http = http or httpx.Client(
            base_url=base, timeout=10.0, headers={"Authorization": admin_token}
        )

    def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            reply = self._http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise ShimError(
                f"{self.description}: {type(exc).__name__}: {exc}; is the "
                "server up and UNLEASH_URL right?"
            ) from None
        if reply.status_code in (401, 403):
            raise ShimError(
                f"{self.description} refused the admin token "
                f"({reply.status_code}); check UNLEASH_ADMIN_TOKEN"
            )
        return reply

    def _flag(self, name: str) -> tuple[int, str] | None:
        reply = self._call("GET", f"{self._project}/{name}")
        if reply.status_code == 404:
            return None
        self._ok(reply, f"read {name}")
        for env in reply.json().get("environments", []):
            if env.get("name") != self.environment:
                continue
            rollout = next(
                (s for s in env.get("strategies", []) if s.get("name") == "flexibleRollout"), None
            )
            params = (rollout or {}).get("parameters", {})
            percent = int(float(params.get("rollout", 100 if env.get("enabled") else 0)))
            return (percent if env.get("enabled") else 0), str(
                params.get("stickiness") or "default"
            )
        return 0, "default"

    def read(self) -> FlagState:
        """Every task with a serve or shadow flag in the project."""
        reply = self._call("GET", self._project)
        self._ok(reply, "list flags")
        names = [f["name"] for f in reply.json().get("features", [])]
        tasks: dict[str, TaskFlags] = {}
        for task in sorted(
            {n.rsplit(".", 1)[0] for n in names if n.endswith((".serve", ".shadow"))}
        ):
            serve = self._flag(serve_flag(task)) or (0, "default")
            shadow = self._flag(shadow_flag(task)) or (0, "default")
            try:
                tasks[task] = TaskFlags(serve=serve[0], shadow=shadow[0], stickiness=serve[1])
            except ValueError:
                continue
        kill = self._flag("shim.kill")
        return FlagState(tasks, kill=bool(kill and kill[0] >= 100))

    def apply(self, changes: Mapping[str, Setting]) -> None:
        """Set both flags of each task."""
        for task, setting in changes.items():
            self._set(serve_flag(task), setting.serve)
            self._set(shadow_flag(task), setting.shadow)

    def _set(self, name: str, percent: int) -> None:
        if self._call("GET", f"{self._project}/{name}").status_code == 404:
            self._ok(
                self._call("POST", self._project, json={"name": name, "type": "release"}),
                f"create {name}",
            )
        path = f"{self._project}/{name}/environments/{self.environment}"
        reply = self._call("GET", f"{path}/strategies")
        self._ok(reply, f"read strategies of {name}")
        rollout = next((s for s in reply.json() if s.get("name") == "flexibleRollout"), None)
        params = {"rollout": str(percent), "stickiness": "default", "groupId": name}
        if rollout is None:
            self._ok(
                self._call(
                    "POST",
                    f"{path}/strategies",
                    json={"name": "flexibleRollout", "parameters": params, "constraints": []},
                ),
                f"add a rollout to {name}",
            )
        elif str(rollout.get("parameters", {}).get("rollout")) != str(percent):
            params = {**rollout.get("parameters", {}), "rollout": str(percent)}
            self._ok(
                self._call(
                    "PUT",
                    f"{path}/strategies/{rollout['id']}",
                    json={
                        "name": "flexibleRollout",
                        "parameters": params,
                        "constraints": rollout.get("constraints", []),
                    },
                ),
                f"set {name} to {percent} %",
            )
        self._ok(
            self._call("POST", f"{path}/{'on' if percent > 0 else 'off'}"),
            f"switch {name} {'on' if percent > 0 else 'off'}",
        )

    def _ok(self, reply: httpx.Response, what: str) -> None:
        if reply.status_code >= 300:
            raise ShimError(
                f"{self.description}: cannot {what}: {reply.status_code} {reply.text[:200]}"
            )

    def close(self) -> None:
        """Close the HTTP client."""
        self._http.close()
