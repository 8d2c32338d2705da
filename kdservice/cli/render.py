"""How `kd` shows jobs, reports and live progress (rich; plain lines when not a terminal)."""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from kdservice.client import Artifact, CredentialInfo, Event, FileInfo, Job

STATUS_STYLE = {
    "queued": "grey62",
    "running": "bold blue",
    "cancelling": "dark_orange",
    "succeeded": "bold green",
    "failed": "bold red",
    "cancelled": "grey50",
}


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


def _pct(v: Any) -> str:
    return f"{100 * v:.2f}%" if isinstance(v, int | float) else "-"


def _num(v: Any, digits: int = 4) -> str:
    return f"{v:.{digits}g}" if isinstance(v, int | float) else "-"


def _whole(v: Any) -> str:
    return f"{v:,.0f}" if isinstance(v, int | float) else "-"


def quality(job: Job) -> str:
    student = (job.report or {}).get("student") or {}
    if "spearman" in student:  # an embedding job: fidelity to the teacher
        return f"spearman {_num(student['spearman'])}"
    if "accuracy" in student:
        return _pct(student["accuracy"])
    if "mse" in student:
        return f"mse {_num(student['mse'])}"
    if "perplexity" in student:
        return f"ppl {_num(student['perplexity'])}"
    return _pct(job.metrics.get("accuracy"))


def jobs_table(jobs: list[Job]) -> Table:
    table = Table(show_edge=False, pad_edge=False)
    for column in ("ID", "NAME", "KIND", "STATUS", "PROGRESS", "QUALITY", "CREATED"):
        table.add_column(column, no_wrap=column in ("ID", "STATUS", "CREATED"))
    for job in jobs:
        fraction = job.progress.fraction
        table.add_row(
            job.id,
            job.name,
            job.kind,
            status_text(job.status),
            f"{100 * fraction:.0f}%" if fraction is not None else "-",
            quality(job),
            local_time(job.created_at),
        )
    return table


def local_time(stamp: str) -> str:
    """An ISO timestamp from the service (UTC) in this machine's time zone, named."""
    from datetime import datetime

    try:
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return stamp
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def files_table(files: list[FileInfo]) -> Table:
    table = Table(show_edge=False, pad_edge=False)
    for column in ("ID", "PURPOSE", "BYTES", "SHA256", "NAME", "CREATED"):
        table.add_column(
            column, no_wrap=column != "NAME", justify="right" if column == "BYTES" else "left"
        )
    for f in files:
        table.add_row(
            f.id, f.purpose, f"{f.bytes:,}", f.sha256[:12], f.filename, local_time(f.created_at)
        )
    return table


def credentials_table(credentials: list[CredentialInfo]) -> Table:
    table = Table(show_edge=False, pad_edge=False)
    for column in ("NAME", "CREATED", "UPDATED"):
        table.add_column(column, no_wrap=True)
    for c in credentials:
        table.add_row(c.name, local_time(c.created_at), local_time(c.updated_at))
    return table


def artifacts_table(artifacts: list[Artifact]) -> Table:
    table = Table(show_edge=False, pad_edge=False)
    for column in ("ID", "NAME", "BYTES", "SHA256"):
        table.add_column(column, no_wrap=True, justify="right" if column == "BYTES" else "left")
    for a in artifacts:
        table.add_row(a.id, a.name, f"{a.bytes:,}", a.sha256)
    return table


def _noisy(report: dict[str, Any], batch: str) -> str:
    """A latency measured while the machine was busy or spread wide (kdcore.shipping.latency)."""
    return " NOISY" if ((report.get("latency") or {}).get(batch) or {}).get("noisy") else ""


def fidelity_table(report: dict[str, Any]) -> Table:
    """An embedding job (kdcore.text.embedding): the student's fidelity to the teacher
    on held-out text, and before training (baseline: true), beside both models' speed."""
    student, teacher = report.get("student") or {}, report.get("teacher") or {}
    before = report.get("baseline") or {}
    table = Table(title="report", show_edge=False, title_justify="left")
    for column in ("", "teacher", "student", "student before training"):
        table.add_column(column, justify="right" if column else "left")
    top = next((k for k in student if k.startswith("top") and k.endswith("_overlap")), "")
    rows = [
        (
            "spearman (pairwise cosines)",
            "1",
            _num(student.get("spearman")),
            _num(before.get("spearman")),
        ),
        (
            f"{top.removesuffix('_overlap')} neighbour overlap",
            "1",
            _num(student.get(top)),
            _num(before.get(top)),
        ),
        ("cosine to the teacher", "1", _num(student.get("cosine")), _num(before.get("cosine"))),
        ("tokens/s", _whole(teacher.get("tokens_per_s")), _whole(student.get("tokens_per_s")), "-"),
        (
            "latency b1 (ms)",
            _num(teacher.get("latency_ms_batch1")),
            _num(student.get("latency_ms_batch1")),
            "-",
        ),
        ("parameters", _whole(teacher.get("parameters")), _whole(student.get("parameters")), "-"),
    ]
    for row in rows:
        table.add_row(*row)
    return table


def report_table(report: dict[str, Any]) -> Table:
    """Teacher, student and (with baseline: true) the student trained without a teacher,
    side by side; the baseline has its quality and training time only."""
    student, teacher = report.get("student") or {}, report.get("teacher") or {}
    baseline = report.get("baseline") or {}
    key = next((k for k in ("accuracy", "perplexity") if k in student), "mse")
    show = _pct if key == "accuracy" else _num
    table = Table(title="report", show_edge=False, title_justify="left")
    table.add_column("")
    if teacher:
        table.add_column("teacher", justify="right")
    table.add_column("student", justify="right")
    if baseline:
        table.add_column("baseline (no teacher)", justify="right")
    rows: list[tuple[str, Any, Any]] = [
        (key, show(teacher.get(key)), show(student.get(key))),
        ("architecture", teacher.get("arch", "-"), student.get("arch", "-")),
        ("parameters", f"{teacher.get('parameters', 0):,}", f"{student.get('parameters', 0):,}"),
        (
            "bytes on disk",
            f"{teacher.get('bytes_on_disk', 0):,}",
            f"{student.get('bytes_on_disk', 0):,}",
        ),
    ]
    if "tokens_per_s" in student:  # a text model: its speed is tokens/s, not image latency
        rows.append(
            ("tokens/s", _whole(teacher.get("tokens_per_s")), _whole(student.get("tokens_per_s")))
        )
    else:
        rows += [
            (
                "latency b1 (ms)" + _noisy(report, "batch1"),
                _num(teacher.get("latency_ms_batch1")),
                _num(student.get("latency_ms_batch1")),
            ),
            (
                "latency b64 (ms)" + _noisy(report, "batch64"),
                _num(teacher.get("latency_ms_batch64")),
                _num(student.get("latency_ms_batch64")),
            ),
        ]
    for name, t, s in rows:
        cells = [name, t, s] if teacher else [name, s]
        if baseline:
            cells.append(show(baseline.get(key)) if name == key else "-")
        table.add_row(*cells)
    return table


def kd_gain_text(report: dict[str, Any]) -> str:
    """The KD gain in its unit (kdcore.shipping.kd_gain): points, or a perplexity/MSE ratio."""
    gain, unit = report.get("kd_gain"), report.get("kd_gain_unit")
    if not isinstance(gain, int | float):
        return "-"
    return f"{gain:+.2f} points" if unit == "points" else f"{gain:.3f}x ({unit})"


def report_summary(report: dict[str, Any]) -> str:
    parts = []
    if isinstance(report.get("speedup"), int | float):  # an embedding job: tokens/s ratio
        parts.append(f"speed-up {report['speedup']}x (tokens/s)")
    if "compression_ratio" in report:
        parts.append(f"compression {report['compression_ratio']}x")
        parts.append(f"speed-up {report.get('speedup_batch1')}x (batch 1)")
    if "agreement" in report:
        parts.append(f"agreement {_pct(report['agreement'])}")
    if "kd_gain" in report:
        parts.append(f"KD gain over scratch {kd_gain_text(report)}")
    speed = (
        f"{report['train_tokens_per_s']} tokens/s"
        if "train_tokens_per_s" in report
        else f"{report.get('train_images_per_s')} img/s"
    )
    parts.append(
        f"{report.get('epochs')} epochs in {report.get('training_time_s')} s "
        f"({speed}, {report.get('device')}, {report.get('precision')})"
    )
    return " | ".join(parts)


def job_details(job: Job) -> Group:
    head = Table.grid(padding=(0, 2))
    head.add_column(style="dim")
    head.add_column()
    head.add_row("id", job.id)
    head.add_row("name", job.name)
    head.add_row("kind", job.kind)
    head.add_row("status", status_text(job.status))
    head.add_row("attempt", f"{job.attempt}/{job.max_attempts}")
    if job.queue_position:
        head.add_row("queue position", str(job.queue_position))
    p = job.progress
    if p.stage == "generating":
        head.add_row("progress", f"generating: {p.step}/{p.total_steps} answers of the teacher")
    elif p.epoch:
        head.add_row("progress", f"epoch {p.epoch}/{p.epochs}, step {p.step}/{p.total_steps}")
    if job.metrics:
        head.add_row("student (val)", ", ".join(f"{k} {_num(v)}" for k, v in job.metrics.items()))
    if job.baseline_metrics:
        figures = ", ".join(f"{k} {_num(v)}" for k, v in job.baseline_metrics.items())
        head.add_row("baseline (val)", f"{figures}  (the student without a teacher)")
    if job.error:
        head.add_row("error", Text(job.error, style="red"))
    timeline = Table(title="timeline", show_edge=False, title_justify="left")
    for column in ("at", "status", "reason"):
        timeline.add_column(column)
    for t in job.status_transitions:
        timeline.add_row(local_time(t.at), status_text(t.to_status), t.reason)
    parts: list[Any] = [head, Text(""), timeline]
    if job.report:
        parts += report_parts(job.report)
    return Group(*parts)


def report_parts(report: dict[str, Any]) -> list[Any]:
    """A finished job's report: the models side by side, the KD verdict (red when the
    teacher made the student worse), the gate, the exports and a sweep's trials."""
    table = fidelity_table(report) if report.get("task") == "embedding" else report_table(report)
    parts: list[Any] = [Text(""), table, Text(report_summary(report))]
    if report.get("kd_verdict"):
        style = "green" if report.get("kd_helped") else "bold red"
        parts.append(Text(report["kd_verdict"], style=style))
    if report.get("gate"):
        parts += [Text(""), gate_table(report["gate"])]
    if report.get("exports"):
        parts += [Text(""), export_table(report["exports"])]
    if report.get("sweep"):
        parts += [Text(""), *sweep_lines(report["sweep"])]
    return parts


def export_table(exports: dict[str, Any]) -> Table:
    """report.exports: each written format's test quality, CPU latency and size."""
    table = Table(title="exports", show_edge=False, title_justify="left")
    for column in ("format", "runtime", "quality", "latency b1 (ms)", "latency b64 (ms)", "bytes"):
        table.add_column(column, justify="left" if column in ("format", "runtime") else "right")
    for fmt, row in exports.items():
        quality = _pct(row["accuracy"]) if "accuracy" in row else f"mse {_num(row.get('mse'))}"
        table.add_row(
            fmt,
            str(row.get("runtime", "-")),
            quality,
            _num(row.get("latency_ms_batch1")),
            _num(row.get("latency_ms_batch64")),
            f"{row.get('bytes', 0):,}",
        )
    return table


def gate_table(gate: dict[str, Any]) -> Table:
    """The readiness gate (spec `gate`): the verdict, then each check."""
    verdict = Text("passed", style="green") if gate.get("passed") else Text("failed", style="red")
    table = Table(title=Text.assemble("gate: ", verdict), show_edge=False, title_justify="left")
    for column in ("check", "value", "limit", ""):
        table.add_column(column, justify="left" if column == "check" else "right")
    for name, check in (gate.get("checks") or {}).items():
        label = f"{name} ({check['class']})" if check.get("class") else name
        label += f" [{check['unit']}]" if check.get("unit") else ""
        label += " NOISY" if check.get("noisy") else ""  # not believed: see report.latency
        ok = Text("ok", style="green") if check.get("passed") else Text("FAIL", style="red")
        table.add_row(label, _num(check.get("value")), _num(check.get("limit")), ok)
    return table


def outcome(job: Job) -> str:
    """What happened to a job that did not succeed, in one line: who ended it, when, why."""
    ended = next((t for t in reversed(job.status_transitions) if t.to_status == job.status), None)
    at = f" at {local_time(ended.at)}" if ended else ""
    if job.status == "cancelled":
        why = f" ({ended.reason})" if ended and ended.reason else ""
        return f"job {job.id} was cancelled by request{at}{why}"
    reason = job.error or (ended.reason if ended else "") or "no reason recorded"
    return f"job {job.id} {job.status}{at}: {reason}"


def whose(data: dict[str, Any]) -> str:
    """Which model a progress figure belongs to, as a line starts with it."""
    if data.get("model", data.get("phase")) == "baseline":
        return "baseline (no teacher)"
    return "student" if data.get("phase", "train") == "train" else str(data.get("phase"))


def progress_line(data: dict[str, Any]) -> str:
    """One line per epoch: epoch, loss terms, accuracy (or a language model's
    perplexity), images/s (or tokens/s), ETA."""
    metrics = data.get("metrics") or {}
    parts = [f"{whose(data)} epoch {data.get('epoch')}/{data.get('epochs')}"]
    parts += [f"{k} {v:.4f}" for k, v in (data.get("losses") or {}).items()]
    if "loss" in metrics:
        parts.append(f"val_loss {metrics['loss']:.4f}")
    if "accuracy" in metrics:
        parts.append(f"acc {_pct(metrics['accuracy'])}")
    if "mse" in metrics:
        parts.append(f"mse {metrics['mse']:.4g}")
    if "perplexity" in metrics:
        parts.append(f"perplexity {metrics['perplexity']:.3f}")
    if data.get("images_per_s"):
        parts.append(f"{data['images_per_s']:.0f} img/s")
    if data.get("tokens_per_s"):
        parts.append(f"{data['tokens_per_s']:.0f} tokens/s")
    if data.get("eta_s") is not None:
        parts.append(f"ETA {data['eta_s']:.0f}s")
    return "  ".join(parts)


TRIAL_HEADER = (
    "trial rung  params                                   quality  latency b1  parameters  epochs"
)


def host_line(kind: str, data: dict[str, Any]) -> str:
    """A multi-host job's events: where its nodes run, a host's throughput, a lost host."""
    if kind == "hosts":
        nodes = ", ".join(
            f"node {n['node_rank']} {n['host']} (ranks {','.join(map(str, n['ranks']))})"
            for n in data.get("hosts", [])
        )
        return f"attempt {data.get('attempt')} on {nodes}"
    host, attempt = data.get("host"), data.get("attempt")
    if kind == "node_lost":
        return f"lost node {data.get('node_rank')} ({host}) in attempt {attempt}"
    return f"host {host}: epoch {data.get('epoch')} {data.get('rate', 0):.0f} {data.get('unit')}"


def trial_line(trial: dict[str, Any]) -> str:
    """One row of a sweep's trial table, as each trial is recorded."""
    params = " ".join(f"{k.split('.')[-1]}={v}" for k, v in (trial.get("params") or {}).items())
    quality = next((trial[k] for k in ("accuracy", "mse") if trial.get(k) is not None), None)
    shown = _pct(quality) if "accuracy" in trial else _num(quality)
    row = (
        f"{trial.get('trial', '?'):>5} {trial.get('rung', 0):>4}  {params[:40]:<40} "
        f"{shown:>8} {_num(trial.get('latency_ms_batch1')):>8} ms {trial.get('parameters', 0):>11,}"
        f" {trial.get('epochs_run', 0):>4}/{trial.get('epochs', '?')}"
    )
    if trial.get("excluded_by"):
        row += "  excluded: " + "; ".join(trial["excluded_by"])
    return row


def sweep_lines(sweep: dict[str, Any]) -> list[Text]:
    """The whole trial table of a finished sweep, the selected trial and the front marked."""
    lines = [Text(f"sweep ({sweep.get('strategy')}, by validation {sweep.get('metric')})")]
    lines.append(Text(TRIAL_HEADER, style="bold"))
    for trial in sweep.get("trials") or []:
        mark = " <- selected" if trial.get("trial") == sweep.get("best") else ""
        front = " (Pareto)" if trial.get("trial") in (sweep.get("pareto") or []) else ""
        lines.append(Text(trial_line(trial) + front + mark))
    return lines


class Watcher:
    """Shows a job's events as they arrive: a live bar on a terminal, lines otherwise."""

    def __init__(self, console: Console):
        self.console = console
        self.live = console.is_terminal
        self.bar: Progress | None = None
        self.task: TaskID | None = None
        self.last_losses: dict[str, float] = {}
        self.last_acc = ""
        self.model = "student"
        self.trials_shown = 0

    def __enter__(self) -> Watcher:
        if self.live:
            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.percentage:>3.0f}%"),
                TextColumn("{task.fields[detail]}"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.bar.start()
            self.task = self.bar.add_task("queued", total=1, detail="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def __call__(self, event: Event) -> None:
        data = event.data
        if event.type == "status":
            self.console.print(
                Text.assemble(
                    "status ", status_text(data.get("status", "?")), f"  {data.get('reason', '')}"
                )
            )
        elif event.type == "attempt":
            self.console.print(f"attempt {data.get('attempt')} on {data.get('worker')}")
        elif event.type in ("hosts", "host", "node_lost"):  # a job on several hosts
            self.console.print(host_line(event.type, data), highlight=False)
        elif event.type == "trial":  # a sweep: the trial table fills in, row by row
            if not self.trials_shown:
                self.console.print(Text(TRIAL_HEADER, style="bold"), highlight=False)
            self.trials_shown += 1
            self.console.print(trial_line(data), highlight=False)
        elif event.type in ("progress", "epoch"):
            if whose(data) != self.model:  # the baseline starts: no student figure carries over
                self.model, self.last_losses, self.last_acc = whose(data), {}, ""
            if data.get("losses"):
                self.last_losses = data["losses"]
            metrics = data.get("metrics") or {}
            if "accuracy" in metrics:
                self.last_acc = f"acc {_pct(metrics['accuracy'])}"
            if self.bar is not None and self.task is not None:
                losses = " ".join(f"{k} {v:.3f}" for k, v in self.last_losses.items())
                rate = (
                    f"{data['images_per_s']:.0f} img/s"
                    if data.get("images_per_s")
                    else f"{data['tokens_per_s']:.0f} tokens/s"
                    if data.get("tokens_per_s")
                    else ""
                )
                epoch, epochs = data.get("epoch"), data.get("epochs")
                trial = data.get("trial") or {}
                where = f"trial {trial['index']}/{trial.get('of')} " if trial else ""
                self.bar.update(
                    self.task,
                    description=f"{where}{self.model} epoch {epoch}/{epochs}",
                    completed=data.get("step") or 0,
                    total=data.get("total_steps") or 1,
                    detail=f"{losses} {self.last_acc} {rate}".strip(),
                )
            if event.type == "epoch":
                # printed above the live bar on a terminal, as a plain line otherwise
                self.console.print(progress_line({**data, "losses": self.last_losses}))
