"""The client's verbs of the `autocompress` command (added to its parser by service/cli.py):

    autocompress submit job.json [--wait]     # --wait: a progress bar fed by the job's events
    autocompress jobs [--state running]
    autocompress status JOB
    autocompress trials JOB [--state succeeded]
    autocompress pareto JOB [--open]          # --open: the report page in a browser
    autocompress download TRIAL [--output F]
    autocompress export TRIAL --format onnx [--output F]
    autocompress cancel JOB

The server and the key come from AUTOCOMPRESS_URL and AUTOCOMPRESS_API_KEY (or --url,
--api-key). `--json` prints the server's JSON instead of a table. An error answer is printed
as the server's message (its `detail` and each field's `errors`), with exit status 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import webbrowser
from collections.abc import Callable
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from client.api import ApiError, Client

Handler = Callable[[Client, argparse.Namespace], int]
TRIAL_DONE_EVENTS = ("trial.finished", "trial.failed", "trial.cancelled")


def _out(stderr: bool = False) -> Console:
    """Tables on stdout (the progress bar on stderr); wide enough to stay readable when the
    stream is a file or a pipe."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else 200)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _best_text(job: dict[str, Any]) -> str:
    best = job.get("best")
    if not best:
        return "best: -"
    metrics = best.get("metrics") or {}
    shown = ", ".join(
        f"{k} {_fmt(metrics[k])}" for k in ("compression_ratio", "accuracy") if k in metrics
    )
    return f"best: trial {best['id']} ({shown})"


def _eta_text(job: dict[str, Any]) -> str:
    eta = (job.get("progress") or {}).get("eta_seconds")
    if eta is None:
        return "ETA -"
    minutes, seconds = divmod(int(round(eta)), 60)
    return f"ETA {minutes}:{seconds:02d}"


def _job_row(job: dict[str, Any]) -> list[str]:
    progress = job["progress"]
    return [
        str(job["id"]),
        job["state"],
        f"{progress['trials_done']}/{progress['trials_total']}",
        _eta_text(job)[4:],
        _best_text(job)[6:],
        _fmt(job.get("stop_reason") or job.get("error")),
    ]


def _jobs_table(jobs: list[dict[str, Any]]) -> Table:
    table = Table("job", "state", "trials", "ETA", "best", "stop reason")
    for job in jobs:
        table.add_row(*_job_row(job))
    return table


def _fidelity_cells(trial: dict[str, Any]) -> list[str]:
    """The trial's `fidelity` (the share of its strategy's fine-tuning it has had), `rung` and
    `parent` (the trial it continues or starts from; "-" for none)."""
    return [_fmt(trial.get("fidelity")), _fmt(trial.get("rung")), _fmt(trial.get("parent"))]


def _trials_table(trials: list[dict[str, Any]], title: str) -> Table:
    names = ("accuracy", "accuracy_drop", "size_bytes", "compression_ratio", "latency_ms")
    table = Table("trial", "#", "state", "fidelity", "rung", "parent", "strategy", "params",
                  *names, "feasible", title=title)  # fmt: skip
    for t in trials:
        metrics = t.get("metrics") or {}
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in (t.get("params") or {}).items())
        state = t["state"]
        if state == "running" and t.get("stage"):
            state = f"running ({t['stage']}, epoch {_fmt(t.get('epoch'))})"
        table.add_row(
            str(t["id"]), str(t["number"]), state, *_fidelity_cells(t), t["strategy"], params,
            *(_fmt(metrics.get(n)) for n in names), _fmt(t.get("feasible")),
        )  # fmt: skip
    return table


# --- the verbs ----------------------------------------------------------------------------


def _follow(api: Client, job_id: int) -> dict[str, Any]:
    """A progress bar of the job (trials done, best so far, ETA) fed by its event stream."""
    job = api.job(job_id)
    total = job["progress"]["trials_total"]
    columns = (
        TextColumn("job {task.fields[job]}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[best]}"), TextColumn("{task.fields[eta]}"),
        TextColumn("{task.fields[running]}"),
    )  # fmt: skip
    with Progress(*columns, console=_out(stderr=True), transient=False) as bar:
        task = bar.add_task("job", total=total, job=job_id, best=_best_text(job),
                            eta=_eta_text(job), running="")  # fmt: skip
        for event in api.events(job_id):
            data = event.data
            if event.kind == "trial.progress" or event.kind == "trial.started":
                stage = data.get("stage") or "starting"
                bar.update(task, running=f"trial {data.get('number')}: {stage} "
                                         f"{100 * (data.get('progress') or 0):.0f}%")  # fmt: skip
            if event.kind in TRIAL_DONE_EVENTS or event.kind == "job.finished":
                job = api.job(job_id)
                bar.update(task, completed=job["progress"]["trials_done"], best=_best_text(job),
                           eta=_eta_text(job), running="")  # fmt: skip
    return api.job(job_id)


def _submit(api: Client, args: argparse.Namespace) -> int:
    accepted = api.submit(args.spec)
    if not args.wait:
        _print_json(accepted)
        return 0
    job = _follow(api, accepted["id"])
    summary = {k: job.get(k) for k in ("id", "state", "stop_reason", "error", "progress")}
    summary["best"] = job.get("best")
    _print_json(summary)
    return 0 if job["state"] == "succeeded" else 1


def _jobs(api: Client, args: argparse.Namespace) -> int:
    jobs = api.jobs(state=args.state, limit=args.limit)
    if args.json:
        _print_json(jobs)
    else:
        _out().print(_jobs_table(jobs))
    return 0


def _status(api: Client, args: argparse.Namespace) -> int:
    job = api.job(args.job)
    if args.json:
        _print_json(job)
        return 0
    _out().print(_jobs_table([job]))
    running = [t for t in api.trials(args.job, state="running")]
    if running:
        _out().print(_trials_table(running, "running"))
    return 0


def _trials(api: Client, args: argparse.Namespace) -> int:
    trials = api.trials(args.job, state=args.state)
    if args.json:
        _print_json(trials)
    else:
        _out().print(_trials_table(trials, f"job {args.job}"))
    return 0


def _pareto(api: Client, args: argparse.Namespace) -> int:
    front = api.pareto(args.job)
    if args.json:
        _print_json(front)
    else:
        goals = ", ".join(f"{m['metric']} ({m['goal']})" for m in front["metrics"])
        _out().print(_trials_table(front["trials"], f"Pareto front of job {args.job}: {goals}"))
    if args.open:
        url = api.report_url(args.job)
        print(url, file=sys.stderr)
        webbrowser.open(url)
    return 0


def _download(api: Client, args: argparse.Namespace) -> int:
    path = api.download(args.trial, args.output)
    _print_json({"trial": args.trial, "path": str(path), "size_bytes": path.stat().st_size})
    return 0


def export_trial(api: Client, args: argparse.Namespace) -> int:
    """The `export TRIAL` verb: download the export the server makes of a trial's model."""
    path = api.export(args.trial, args.format, args.output)
    _print_json({"trial": args.trial, "format": args.format, "path": str(path),
                 "size_bytes": path.stat().st_size})  # fmt: skip
    return 0


def _cancel(api: Client, args: argparse.Namespace) -> int:
    job = api.cancel(args.job)
    _print_json({"id": job["id"], "state": job["state"]})
    return 0


def run(handler: Handler, args: argparse.Namespace) -> int:
    """Run a verb against the server; an error answer is shown as the server's message."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # no line per request
    try:
        with Client(args.url, args.api_key) as api:
            return handler(api, args)
    except ApiError as exc:
        print(f"error: {exc.detail} (HTTP {exc.status})", file=sys.stderr)
        for error in exc.errors:
            print(f"  {error.get('field')}: {error.get('message')}", file=sys.stderr)
        return 1
    except httpx.TransportError as exc:
        print(f"error: cannot reach the server ({exc}); set AUTOCOMPRESS_URL", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def add_commands(sub: Any, taken: set[str] | None = None) -> None:
    """Add the client's verbs to an argparse subparsers object (skipping names in `taken`)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=None, help="the server (default: $AUTOCOMPRESS_URL)")
    common.add_argument("--api-key", default=None, help="default: $AUTOCOMPRESS_API_KEY")
    common.add_argument("--json", action="store_true", help="print the server's JSON")

    def verb(name: str, handler: Handler, help: str) -> argparse.ArgumentParser | None:
        if taken and name in taken:
            return None
        p = sub.add_parser(name, help=help, parents=[common])
        p.set_defaults(func=lambda args: run(handler, args))
        return p

    p = verb("submit", _submit, "submit a job (JSON file) to the server")
    p.add_argument("spec", help="the job's JSON file")
    p.add_argument("--wait", action="store_true", help="follow it with a progress bar")
    p = verb("jobs", _jobs, "list your jobs")
    p.add_argument("--state", default=None, help="only jobs in this state, e.g. running")
    p.add_argument("--limit", type=int, default=None)
    p = verb("status", _status, "a job's state, progress, ETA and best trial")
    p.add_argument("job", type=int)
    p = verb("trials", _trials, "a job's trials")
    p.add_argument("job", type=int)
    p.add_argument("--state", default=None)
    p = verb("pareto", _pareto, "a job's Pareto front")
    p.add_argument("job", type=int)
    p.add_argument("--open", action="store_true", help="open the report page in a browser")
    p = verb("download", _download, "download a trial's packed checkpoint")
    p.add_argument("trial", type=int)
    p.add_argument("--output", default=None, help="file or folder (default: trial-ID.acpk)")
    p = verb("export", export_trial, "download a trial's model exported by the server")
    if p is not None:
        p.add_argument("trial", type=int)
        p.add_argument("--format", default="onnx")
        p.add_argument("--output", default=None)
    p = verb("cancel", _cancel, "cancel a job")
    p.add_argument("job", type=int)
