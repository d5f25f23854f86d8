"""Run every benchmark and write the table: ``bench/RESULTS.md`` and
``bench/results.json``, with the machine, the date, each figure and its anchor.

    python bench/results.py              # full runs (``make bench``), about 10 minutes
    python bench/results.py --quick      # smoke runs (``make bench-smoke``), into a
                                         # temporary directory unless --out is given
    python bench/results.py --only startup   # run some benchmarks again and merge their
                                             # figures into results.json (the table says so)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BENCHES = (
    "startup",
    "overhead",
    "flags",
    "streams",
    "cpu",
    "compare",
    "report",
    "load",
    "records",
    "judge",
    "sequential",
)


def machine() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as info:
        mem_kb = int(info.readline().split()[1])
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 1e6, 1),
        "python": platform.python_version(),
        "os": platform.platform(),
    }


def run_all(quick: bool, tmp: Path, names: tuple[str, ...] = BENCHES) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for name in names:
        out = tmp / f"{name}.json"
        cmd = [sys.executable, str(HERE / f"{name}.py"), "--json", str(out)]
        cmd += ["--quick"] if quick else []
        print(f"== {name}", flush=True)
        done = subprocess.run(cmd, text=True)
        figures[name] = json.loads(out.read_text()) if out.exists() else None
        figures[name + "_exit"] = done.returncode
    return figures


def rows(f: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(figure, measured, anchor, ratio, target and verdict) per line of the table."""
    out: list[tuple[str, str, str, str, str]] = []

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    s = f.get("startup")
    if s:
        cmds, runs = s["commands"], s["runs"]
        anchor = (
            f"import httpx {cmds['import httpx']['best_ms']:.0f} ms; "
            f"python -c pass {cmds['python -c pass']['best_ms']:.0f} ms"
        )
        for name, label in (("import shim", 'python -c "import shim"'), ("shim --help", "")):
            c, limit = cmds[name], s["targets_ms"][name]
            out.append(
                (
                    f"start-up: `{label or name}`, fresh interpreters (best / median of {runs})",
                    f"{c['best_ms']:.0f} / {c['median_ms']:.0f} ms (CPU {c['cpu_ms']:.0f} ms)",
                    anchor,
                    f"{c['ratio_to_httpx']:.2f}x import httpx",
                    f"best <= {limit:.0f} ms: {verdict(c['best_ms'] <= limit)}",
                )
            )
        c = cmds["import shim; shim.Shim"]
        out.append(
            (
                "start-up: `import shim; shim.Shim` (the decorator's core loaded)",
                f"{c['best_ms']:.0f} / {c['median_ms']:.0f} ms (CPU {c['cpu_ms']:.0f} ms)",
                anchor,
                f"{c['ratio_to_httpx']:.2f}x import httpx",
                "",
            )
        )
    o = f.get("overhead")
    if o:
        off, shadow = o["off"], o["shadow"]
        out.append(
            (
                "decorator, off: added per call (median / p99)",
                f"{off['median_added_us']:.2f} / {off['p99_added_us']:.2f} us",
                f"bare call {off['bare_median_us']:.2f} us",
                "",
                f"median <= 1 us: {verdict(off['median_added_us'] <= 1)}",
            )
        )
        out.append(
            (
                "decorator, shadow 100 %: added per call (median / p99)",
                f"{shadow['median_added_us']:.1f} / {shadow['p99_added_us']:.1f} us",
                f"laboratory {o['laboratory']['median_added_us'] / 1000:.1f} ms; "
                f"UnleashClient.is_enabled {o['unleash']['median_added_us']:.1f} us",
                f"{o['laboratory']['median_added_us'] / max(shadow['median_added_us'], 0.01):,.0f}x"
                " less than laboratory",
                "median <= 15 us, p99 <= 60 us: "
                + verdict(shadow["median_added_us"] <= 15 and shadow["p99_added_us"] <= 60),
            )
        )
    fl = f.get("flags")
    if fl:
        b = fl["backends"]
        file_us = b["FileFlags"]["median_us"]
        for name in ("UnleashFlags", *(n for n in b if n.startswith("OpenFeatureFlags"))):
            out.append(
                (
                    f"one flag decision: `{name}` (mean of blocks, median)",
                    f"{b[name]['median_us']:.2f} us",
                    f"FileFlags {file_us:.2f} us; UnleashClient.is_enabled "
                    f"{b['UnleashClient.is_enabled (one flag)']['median_us']:.1f} us",
                    f"{b[name]['ratio_to_file']:.1f}x FileFlags",
                    "",
                )
            )
    st = f.get("streams")
    if st:
        target = st["targets_us"]
        for kind in ("sync", "async"):
            shadow, off = st[f"shadow-{kind}"], st[f"off-{kind}"]
            floor = st.get(f"floor-{kind}")
            beside = (
                ""
                if floor is None
                else (
                    f"; floor (a bare relay) {floor['chunk_added_us']:.2f} / "
                    f"{floor['start_added_us']:.1f} us"
                )
            )
            good = shadow["chunk_added_us"] <= target["chunk"]
            good &= shadow["start_added_us"] <= target["start"]
            out.append(
                (
                    f"{kind} generator call site, shadow 100 %: added per chunk / at the "
                    f"start (median; {shadow['streams']:,} streams of 64 chunks)",
                    f"{shadow['chunk_added_us']:.2f} / {shadow['start_added_us']:.1f} us "
                    f"(second chunk {shadow['second_added_us']:.1f} us, "
                    f"end {shadow['end_added_us']:.1f} us); "
                    f"off {off['chunk_added_us']:.2f} / {off['start_added_us']:.1f} us; "
                    f"{shadow['compared']:,} compared, {shadow['dropped']} dropped",
                    f"undecorated chunk {shadow['bare_chunk_us']:.2f} us, start "
                    f"{shadow['bare_start_us']:.1f} us{beside}",
                    "",
                    f"chunk <= {target['chunk']:g} us, start <= {target['start']:g} us: "
                    + verdict(good),
                )
            )
    cpu = f.get("cpu")
    if cpu:
        out += cpu_rows(cpu)
    c = f.get("compare")
    if c:
        anchor = c["json.loads of both (anchor)"]["median_us"]
        same = c["meal plan, same shape"]
        out.append(
            (
                "compare a 2 KB meal-plan pair (median / p99)",
                f"{same['median_us']:.0f} / {same['p99_us']:.0f} us",
                f"json.loads of both {anchor:.0f} us",
                f"{same['median_us'] / anchor:.1f}x",
                f"median <= 200 us: {verdict(same['median_us'] <= 200)}",
            )
        )
    r = f.get("report")
    if r:
        anchor = f"json.loads + statistics {r['baseline_s']:.1f} s"
        if "cli_s" in r:  # the command end to end, start-up included
            runs = r["cli_runs_s"]
            out.append(
                (
                    f"`shim report --format json`, {r['records']:,} records "
                    f"({r['megabytes']} MB), a new process, start-up included",
                    f"{r['cli_s']:.2f} s ({min(runs):.2f}-{max(runs):.2f}); "
                    f"a one-record log {r['cli_one_record_s']:.2f} s",
                    anchor,
                    f"{r['cli_speedup']:.1f}x faster",
                    f"<= {r['target_s']:.1f} s and >= {r['target_speedup']:.0f}x: "
                    + verdict(r["pass"]),
                )
            )
        runs = r["report_runs_s"]
        out.append(
            (
                f"`build_report` in process, {r['records']:,} records",
                f"{r['report_s']:.2f} s ({min(runs):.2f}-{max(runs):.2f})",
                anchor,
                f"{r['speedup']:.1f}x faster",
                "",
            )
        )
    load = f.get("load")
    if load:
        for kind in ("sync", "async"):
            k = load[kind]
            out.append(
                (
                    f"load, {kind}: 1,000 shadowed calls/s ({k['calls_total']:,} calls)",
                    f"drops {k['drop_rate'] * 100:.3f} %; RSS {k['rss_growth_mb']:+.1f} MB after "
                    f"warm-up; added p50 {k['added_p50_us']} us, p99 {k['added_p99_us']} us",
                    "the same call site undecorated",
                    "",
                    "drops < 0.1 %, RSS < 20 MB: "
                    + verdict(k["drop_rate"] < 0.001 and k["rss_growth_mb"] < 20),
                )
            )
        for name, label in (("slow_2s", "takes 2 s"), ("hanging", "never answers")):
            k = load.get(name)
            if not k:
                continue
            drops = ", ".join(f"{r} {n:,}" for r, n in sorted(k["drops"].items()))
            out.append(
                (
                    f"load: the task path {label}, 200 calls/s ({k['calls']:,} calls)",
                    f"at most {k['peak_in_flight']} in flight; drops counted ({drops}); "
                    f"RSS {k['rss_growth_mb']:+.1f} MB; added p50 {k['added_p50_us']} us, "
                    f"p99 {k['added_p99_us']} us",
                    f"bound {k['bound']} (workers + queue)",
                    "",
                    "bounded, every call accounted: "
                    + verdict(k["peak_in_flight"] <= k["bound"] and k["accounted"]),
                )
            )
    rec = f.get("records")
    if rec:
        out.append(
            (
                "record writing to a file",
                f"{rec['writing']['records_per_s']:,} records/s",
                f"with comparing: {rec['comparing_and_writing']['records_per_s']:,} records/s",
                "",
                f">= 50,000 records/s: {verdict(rec['writing']['records_per_s'] >= 50_000)}",
            )
        )
        slow = rec["slow_sink"]
        out.append(
            (
                "a sink slower than the traffic (5 ms per batch)",
                f"{slow['dropped_recorder_full']:,} of {slow['records']:,} "
                "counted as recorder_full",
                f"hand-off {slow['handoff_us']} us",
                "",
                "bounded buffer, drops counted",
            )
        )
    j = f.get("judge")
    if j:
        judged, plain, checks = j["judged"], j["plain"], j["checks"]
        out.append(
            (
                f"a {j['judge_ms']} ms judge, {j['sample']:.0%} sampled, at {j['rate']} calls/s",
                f"{judged['records_per_s']:,} records/s; {judged['judge']['calls']} judge "
                f"calls (budget {j['budget_per_min']}/min), {judged['judged']} pairs judged; "
                f"dropped {sum(judged['dropped'].values())}",
                f"without a judge: {plain['records_per_s']:,} records/s, call p50 "
                f"{plain['call_p50_us']} us",
                f"call p50 {judged['call_p50_us']} us",
                "no drops, every pair recorded, budget honoured: " + verdict(all(checks.values())),
            )
        )
    sq = f.get("sequential")
    if sq:
        seq, fixed = sq["aa_sequential"], sq["aa_fixed_watcher"]
        err = sq["error_regression"]
        caught = "; ".join(
            f"{what} caught {sq[name]['sequential_caught']}/{sq['runs']}, median "
            f"{sq[name]['sequential_median_pairs']} pairs"
            for name, what in (
                ("latency_regression", "latency x1.5"),
                ("p95_regression", "p95 x1.5 (tail only)"),
                ("cost_regression", "cost x1.5"),
            )
            if name in sq
        )
        out.append(
            (
                f"false rollbacks on A/A traffic, checked every {sq['step']} pairs "
                f"({sq['runs']} seeded runs of {sq['pairs']:,} pairs; lines at no difference)",
                f"always-valid bounds: {seq['rate']:.1%} (95 % CI {seq['low']:.1%}-"
                f"{seq['high']:.1%}); error +2 points caught {err['sequential_caught']}/"
                f"{sq['runs']}, median {err['sequential_median_pairs']} pairs; {caught}",
                f"fixed windowed bounds (shim watch before): {fixed['rate']:.1%} "
                f"(95 % CI {fixed['low']:.1%}-"
                f"{fixed['high']:.1%}); error +2 points caught {err['watcher_caught']}/"
                f"{sq['runs']}, median {err['watcher_median_pairs']} pairs",
                "",
                f"<= {sq['alpha']:.0%}: " + verdict(seq["rate"] <= sq["alpha"]),
            )
        )
    return out


CPU_KINDS = {
    "meal_plan": "2 KB JSON meal plan",
    "recipe": "4 KB recipe text",
    "receipt": "receipt dict",
    "recipe_scored": "4 KB recipe text, content scored (KIWI_RECIPE)",
    "receipt_scored": "receipt dict, content scored (KIWI_RECEIPT)",
}


def cpu_rows(cpu: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """One row per output kind and rate: the process's CPU per call at shadow and
    canary, what the shim adds to the undecorated loop, and the split by thread."""
    rows = [(k, rate, row, "") for k, rates in cpu["kinds"].items() for rate, row in rates.items()]
    if "slow" in cpu:  # a coordinator answering in tens of ms, the workers sized for it
        slow = cpu["slow"]
        where = f", coordinator answering in {slow['latency_ms']:.0f} ms, "
        where += f"{slow['workers']} workers"
        rows.append((slow["kind"], slow["rate"], slow["row"], where))
    out = []
    for kind, rate, row, where in rows:
        shadow, canary, bare = row["shadow"], row["canary"], row["undecorated"]
        threads = ", ".join(
            f"{name} {us:.0f}"
            for name, us in shadow["threads_us_per_call"].items()
            if us >= 1 and name != "other"
        )
        drops = sum(shadow["drops"].values()) + shadow["expected"] - shadow["compared"]
        verdict = ""
        if "target_us" in shadow:  # bench/cpu.py judged it
            ok = "PASS" if shadow["pass"] else "FAIL"
            verdict = f"<= {shadow['target_us']:.0f} us added, no drops: {ok}"
        out.append(
            (
                f"process CPU per call, {CPU_KINDS.get(kind, kind)}, {int(rate):,} calls/s" + where,
                f"shadow {shadow['cpu_us_per_call']:.0f} us ({threads}); canary "
                f"{canary['cpu_us_per_call']:.0f} us; {drops} dropped",
                f"undecorated {bare['cpu_us_per_call']:.0f} us"
                + (f"; floor +{row['floor']['added_us']:.0f} us" if "floor" in row else ""),
                f"+{shadow['added_us']:.0f} us shadow, +{canary['added_us']:.0f} us canary",
                verdict,
            )
        )
    return out


def markdown(f: dict[str, Any], m: dict[str, Any], when: str, quick: bool) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"Measured {when} with `make bench`{' (smoke sizes)' if quick else ''} on "
        f"{m['cores']} cores ({m['cpu']}), {m['memory_gb']} GB, Python {m['python']}, "
        f"{m['os']}. Every figure is from one run of `bench/results.py`; anchors are "
        "measured side by side in the same run. On a shared virtual machine, figures move "
        "by 10-30 % between runs: treat each as a median with that spread.",
        "",
        "| figure | measured | anchor | ratio | target |",
        "|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows(f)]
    later = f.get("partial") or {}
    lines += [
        "",
        *(
            f"Rows of `{name}` measured later, {when['date']}, on {when['cores']} cores "
            f"({when['cpu']}), with `bench/results.py --only {name}`."
            for name, when in later.items()
        ),
        "Raw figures: `bench/results.json`. Each benchmark's docstring says what it does.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke sizes")
    parser.add_argument("--out", type=Path, help="where RESULTS.md and results.json go")
    parser.add_argument(
        "--table-only", action="store_true", help="rewrite RESULTS.md from results.json"
    )
    parser.add_argument(
        "--only",
        help="comma list of benchmarks to run again; their figures replace theirs in the "
        "existing results.json",
    )
    args = parser.parse_args()
    names = tuple(args.only.split(",")) if args.only else BENCHES
    if unknown := set(names) - set(BENCHES):
        parser.error(f"unknown benchmarks {sorted(unknown)}; there are {', '.join(BENCHES)}")
    if args.table_only:
        saved = json.loads((HERE / "results.json").read_text())
        table = markdown(saved, saved["machine"], saved["date"], saved["quick"])
        (HERE / "RESULTS.md").write_text(table)
        print(table)
        return 0
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or (Path(tmp) if args.quick else HERE)
        figures = run_all(args.quick, Path(tmp), names)
        m = machine()
        out.mkdir(parents=True, exist_ok=True)
        saved = out / "results.json"
        document = {"machine": m, "date": when, "quick": args.quick, **figures}
        if args.only and saved.exists():  # keep the other benchmarks' run, say which is later
            document = json.loads(saved.read_text())
            document.update(figures)
            this_run = {"date": when, "cpu": m["cpu"], "cores": m["cores"]}
            document["partial"] = {**document.get("partial", {}), **dict.fromkeys(names, this_run)}
        saved.write_text(json.dumps(document, indent=2))
        figures = document
        table = markdown(document, document["machine"], document["date"], document["quick"])
        (out / "RESULTS.md").write_text(table)
        print(table)
    failed = [b for b in names if figures.get(b) is None]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
