#!/usr/bin/env bash
# Does task-shim install like a library? Builds a wheel from this working tree and uses it
# from a fresh virtualenv outside the repository, as an app would:
#
#   1. the wheel's top level is `shim` and its dist-info, nothing else;
#   2. installed without extras: `import shim` works, and the `shim` command says which
#      extra to install (exit 2);
#   3. with [cli,sim]: `shim --help` and `shim check` (the embedded defaults); an app
#      directory with its own flags.py and comparators.py imports them next to
#      shim.flags and shim.comparators and wraps a function with a Shim, against
#      `shim sim` started from the installed command;
#   4. with --demo: `shim demo` tells the whole story (about a minute more; DEMO_CALLS
#      sets its --calls, default 2000: 300 takes about half as long).
#
#   scripts/check-install.sh [--demo] [WORKDIR]
#
# WORKDIR (default: a new temporary directory, removed at the end) gets the copy of the
# tree the wheel is built from (src/), the wheel (dist/), the virtualenv (venv/) and the
# app (app/). The build copies the files git tracks or would track, so build/ and
# *.egg-info never land in the working tree and no stale build output enters the wheel.
# PYTHON (default .venv/bin/python, else python3) builds the wheel and the virtualenv.
# Each step prints its time; the first failing step stops the script (non-zero exit).
# Pip's cache makes runs after the first much faster.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
demo=0
if [[ "${1:-}" == "--demo" ]]; then
    demo=1
    shift
fi
if [[ $# -gt 0 ]]; then
    work="$(realpath -m "$1")"
    case "$work/" in
        "$repo"/*) echo "check-install: WORKDIR must be outside the repository ($repo)" >&2; exit 2 ;;
    esac
    mkdir -p "$work"
else
    work="$(mktemp -d "${TMPDIR:-/tmp}/shim-install.XXXXXX")"
    trap 'rm -rf "$work"' EXIT
fi
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    if [[ -x "$repo/.venv/bin/python" ]]; then python="$repo/.venv/bin/python"; else python=python3; fi
fi
# Nothing from the repository or the caller's environment may leak into the checks.
unset PYTHONPATH PYTHONHOME VIRTUAL_ENV PYTHONDONTWRITEBYTECODE
export PIP_DISABLE_PIP_VERSION_CHECK=1

started=$SECONDS
step() {
    printf '== %s (%ds)\n' "$1" $((SECONDS - started))
}
quietly() {  # run "$@" with its stderr in a log, shown only when it fails
    "$@" 2>"$work/stderr.log" || { cat "$work/stderr.log" >&2; exit 1; }
}

step "copy the tree to $work/src"
rm -rf "$work/src" "$work/dist" "$work/venv" "$work/app"
mkdir -p "$work/src" "$work/dist" "$work/app"
(
    cd "$repo"
    git ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' f; do
            if [[ -e "$f" || -L "$f" ]]; then printf '%s\0' "$f"; fi
        done |
        tar --null -T - -cf - | tar -xf - -C "$work/src"
)

step "build the wheel"
quietly "$python" -m pip wheel --quiet --no-deps --wheel-dir "$work/dist" "$work/src"
wheel="$(ls "$work"/dist/task_shim-*.whl)"
echo "wheel: $(basename "$wheel")"
"$python" - "$wheel" <<'EOF'
import sys
import zipfile

names = zipfile.ZipFile(sys.argv[1]).namelist()
top = sorted({n.split("/")[0] for n in names})
print("top level:", " ".join(top))
extra = [t for t in top if t != "shim" and not t.endswith(".dist-info")]
assert not extra, f"the wheel installs more than shim at top level: {extra}"
needed = [
    "shim/py.typed",
    "shim/_defaults/assignments.yaml",
    "shim/_defaults/model_registry.yaml",
    "shim/_defaults/flags.yaml",
    "shim/demo/kiwi/callsites.py",
    "shim/demo/kiwi/flags.yaml",
    "shim/demo/kiwi/orch/assignments.yaml",
    "shim/demo/kiwi/orch/model_registry.yaml",
    "shim/flags/__init__.py",
    "shim/comparators/__init__.py",
    "shim/sim/__init__.py",
]
missing = [n for n in needed if n not in names]
assert not missing, f"the wheel lacks {missing}"
print(f"files: {len(names)}, including the demo's kiwi app and the embedded defaults")
EOF
rm -rf "$work/src"  # from here on, nothing can read the tree the wheel came from

step "a fresh virtualenv, the wheel without extras"
"$python" -m venv "$work/venv"
venv="$work/venv/bin"
quietly "$venv/python" -m pip install --quiet "$wheel"
cd "$work/app"  # outside the repository: `python -c` puts the working directory first
"$venv/python" -c "import shim, sys; assert shim.__file__.startswith(sys.prefix), shim.__file__; print('import shim:', shim.__file__)"
set +e
"$venv/shim" --help >"$work/no-cli.out" 2>&1
code=$?
set -e
cat "$work/no-cli.out"
if [[ $code -ne 2 ]] || ! grep -q "pip install 'task-shim\[cli\]'" "$work/no-cli.out"; then
    echo "check-install: without the cli extra, shim must say what to install and exit 2 (exit $code)" >&2
    exit 1
fi

step "the extras: pip install 'WHEEL[cli,sim]'"
quietly "$venv/python" -m pip install --quiet "$wheel[cli,sim]"
"$venv/shim" --help >/dev/null
echo "shim --help: ok"
"$venv/shim" check >/dev/null
echo "shim check (embedded defaults): ok"

step "an app with its own flags.py and comparators.py"
cat >flags.py <<'EOF'
"""The app's own feature flags (a common module name)."""

DARK_MODE = True
EOF
cat >comparators.py <<'EOF'
"""The app's own comparators (another common name)."""


def same_length(a: str, b: str) -> bool:
    return len(a) == len(b)
EOF
cat >shim_flags.yaml <<'EOF'
kiwi.meal_plan: {serve: 0, shadow: 100}
EOF
cat >app.py <<'EOF'
"""Uses its own flags and comparators modules and task-shim side by side."""

import json
import os
import subprocess
import sys
from pathlib import Path

import comparators
import flags
import shim
from shim.comparators import JsonOutput
from shim.flags import FileFlags

assert flags.DARK_MODE is True and comparators.same_length("ab", "cd"), "the app's modules"
assert Path(flags.__file__).parent == Path(comparators.__file__).parent == Path.cwd()
assert Path(shim.flags.__file__).is_relative_to(sys.prefix), shim.flags.__file__
for name in ("flags", "comparators"):
    assert sys.modules[name] is not sys.modules[f"shim.{name}"]

command = Path(sys.executable).with_name("shim")
sim = subprocess.Popen([command, "sim", "--port", "0", "--latency-ms", "0"], stdout=subprocess.PIPE, text=True)
try:
    url = sim.stdout.readline().split()[-1]
    s = shim.Shim(url, flags=FileFlags("shim_flags.yaml"), log_path="comparisons.jsonl")

    @s.shadow(
        product="kiwi",
        task="meal_plan",
        request=lambda week: shim.TaskRequest(prompt=f"plan week {week}"),
        response=lambda result: result.text,
        output=JsonOutput(),
    )
    def plan_week(week: int) -> str:
        return json.dumps([{"day": 1, "meal_type": "dinner", "recipe_id": week}])

    assert json.loads(plan_week(3))[0]["recipe_id"] == 3, "legacy serves"
    s.close()
finally:
    sim.terminate()
    sim.wait(timeout=10)
rows = [json.loads(line) for line in Path("comparisons.jsonl").read_text().splitlines()]
compared = [r for r in rows if r["event"] == "shim.comparison"]
assert len(compared) == 1 and compared[0]["candidate"]["ok"], rows
print(
    f"app: its own flags and comparators beside shim {os.path.dirname(shim.__file__)}; "
    f"one comparison recorded (served by {compared[0]['served_by']}, "
    f"candidate model {compared[0]['candidate']['model']})"
)
EOF
"$venv/python" app.py

if [[ $demo -eq 1 ]]; then
    step "shim demo"
    demo_started=$SECONDS
    COLUMNS=120 "$venv/shim" demo --calls "${DEMO_CALLS:-2000}" --out "$work/app/shim-demo" \
        >"$work/demo.out" 2>&1 ||
        { cat "$work/demo.out" >&2; exit 1; }
    records=$(wc -l <"$work/app/shim-demo/comparisons.jsonl")
    grep -q "<svg" "$work/app/shim-demo/report.html"
    echo "shim demo: ok in $((SECONDS - demo_started)) s ($records records, report.html)"
fi

step "installs like a library: ok"
