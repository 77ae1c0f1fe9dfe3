"""The moec client: a thin API over the coordinator's gRPC service (proto/moec/v1), with the
same contract as the `moec` CLI (docs/cli.md, docs/rpc.md)."""
import dataclasses
import datetime
import json
import os
import time
from typing import Dict, Iterator, List, Optional, Sequence, Union

import grpc

from moec.v1 import coordinator_pb2 as pb
from moec.v1 import coordinator_pb2_grpc as rpc
from moec.v1 import job_pb2

# Largest response accepted (a report with its figures), as the CLI.
MAX_MESSAGE_BYTES = 256 << 20


class MoecError(Exception):
    """A call the coordinator refused or could not answer: `code` is the grpc.StatusCode
    (NOT_FOUND, INVALID_ARGUMENT, UNAUTHENTICATED, PERMISSION_DENIED, UNAVAILABLE ...) and
    `message` moec's message."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__("%s: %s" % (code.name, message))
        self.code = code
        self.message = message


def _time(ms: int) -> Optional[datetime.datetime]:
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc) if ms else None


def _state(value: int, enum) -> str:
    """JOB_RUNNING -> "running", TASK_DONE -> "done"."""
    return enum.Name(value).split("_", 1)[1].lower()


@dataclasses.dataclass
class Job:
    """A job: its id, recipe name, state ("pending", "running", "succeeded", "failed",
    "cancelled"), times and error; `tasks` counts its tasks by state ("done", "leased" ...) when
    it comes from status() or submit()."""
    job_id: str
    name: str
    state: str
    submitted: Optional[datetime.datetime]
    ended: Optional[datetime.datetime]
    error: str
    workers: int
    tasks: Dict[str, int] = dataclasses.field(default_factory=dict)
    existed: bool = False  # submit(): an identical job was already there (it is returned)

    @property
    def ended_ok(self) -> bool:
        return self.state == "succeeded"

    def __str__(self):
        return self.job_id

    @staticmethod
    def _of(record, tasks=(), existed=False) -> "Job":
        counts: Dict[str, int] = {}
        for t in tasks:
            s = _state(t.state, job_pb2.TaskState)
            counts[s] = counts.get(s, 0) + 1
        return Job(record.job_id, record.name, _state(record.state, job_pb2.JobState),
                   _time(record.submit_time_ms), _time(record.end_time_ms), record.error,
                   record.workers, counts, existed)


@dataclasses.dataclass
class Event:
    """One event of a job's log: `kind` as the CLI prints it ("task_done", "job_succeeded" ...),
    with the job's progress after it (`done` of `total` tasks)."""
    seq: int
    time: Optional[datetime.datetime]
    kind: str
    task_id: str
    message: str
    done: int
    total: int

    def __str__(self):
        return "%s %-14s %s %s [%d/%d]" % (
            self.time.strftime("%H:%M:%S") if self.time else "", self.kind, self.task_id,
            self.message, self.done, self.total)


@dataclasses.dataclass
class Worker:
    worker_id: str
    name: str
    gpu: bool
    memory_bytes: int
    device_memory_bytes: int
    last_seen: Optional[datetime.datetime]
    tasks: List[str]


JobRef = Union[str, Job]


def _job_id(job: JobRef) -> str:
    return job.job_id if isinstance(job, Job) else str(job)


def _read(path: Optional[str]) -> Optional[bytes]:
    if path is None:
        return None
    with open(os.path.expanduser(path), "rb") as f:
        return f.read()


class Client:
    """A connection to a moec coordinator.

    `address` is HOST:PORT. The client token comes from `token` or `token_file` (whose content,
    stripped, is the token), else from $MOEC_TOKEN_FILE. `tls_ca` (a PEM file) turns TLS on;
    `tls_cert` and `tls_key` add a client certificate for mutual TLS, which stands for the token
    when the coordinator lists its identity as a client. `timeout` bounds each call (seconds).
    """

    def __init__(self, address: Optional[str] = None, token: Optional[str] = None,
                 token_file: Optional[str] = None, tls_ca: Optional[str] = None,
                 tls_cert: Optional[str] = None, tls_key: Optional[str] = None,
                 timeout: float = 60.0):
        address = address or os.environ.get("MOEC_COORDINATOR")
        if not address:
            raise ValueError("no coordinator address (give one, or set MOEC_COORDINATOR)")
        token_file = token_file or (None if token else os.environ.get("MOEC_TOKEN_FILE"))
        if token is None and token_file:
            token = _read(token_file).decode().strip()
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        self._metadata = (("authorization", "Bearer " + token),) if token else ()
        self._timeout = timeout
        options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
        if tls_ca or tls_cert:
            creds = grpc.ssl_channel_credentials(_read(tls_ca), _read(tls_key), _read(tls_cert))
            self._channel = grpc.secure_channel(address, creds, options)
        else:
            self._channel = grpc.insecure_channel(address, options)
        self._stub = rpc.CoordinatorServiceStub(self._channel)

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _call(self, method, request, timeout=None):
        try:
            return method(request, timeout=timeout or self._timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise MoecError(e.code(), e.details() or "") from None

    # --- jobs ---

    def submit(self, recipe: Union[str, os.PathLike], overrides: Union[Sequence[str], Dict, None] = None,
               overwrite: bool = False) -> Job:
        """Validates and submits a recipe: a path to a YAML file (its relative paths resolve
        against the file's directory, on the coordinator's filesystem) or the YAML text itself.
        `overrides` are "key=value" strings or a dict, as `moec submit --set`. Submitting the
        same recipe and inputs again returns the existing job (existed=True). Raises MoecError
        (INVALID_ARGUMENT with the recipe's mistake, ALREADY_EXISTS for an output moec did not
        write unless `overwrite`)."""
        if isinstance(overrides, dict):
            overrides = ["%s=%s" % (k, json.dumps(v) if not isinstance(v, str) else v)
                         for k, v in overrides.items()]
        req = pb.SubmitJobRequest(overrides=list(overrides or ()), overwrite=overwrite)
        text = os.fspath(recipe)
        if "\n" not in text and os.path.isfile(os.path.expanduser(text)):
            path = os.path.abspath(os.path.expanduser(text))
            req.recipe_path = path
            with open(path) as f:
                req.recipe_yaml = f.read()
        else:
            req.recipe_yaml = text
        resp = self._call(self._stub.SubmitJob, req)
        job = self.status(resp.job.job_id)
        job.existed = resp.existed
        return job

    def status(self, job: JobRef) -> Job:
        """The job with its task counts by state. Raises MoecError(NOT_FOUND) for an unknown id."""
        resp = self._call(self._stub.GetJob, pb.GetJobRequest(job_id=_job_id(job), include_tasks=True))
        return Job._of(resp.job, resp.tasks)

    def list(self) -> List[Job]:
        """Every job of the coordinator, in submission order (without task counts)."""
        return [Job._of(j) for j in self._call(self._stub.ListJobs, pb.ListJobsRequest()).jobs]

    def cancel(self, job: JobRef) -> None:
        """Cancels a pending or running job (FAILED_PRECONDITION when it already ended)."""
        self._call(self._stub.CancelJob, pb.CancelJobRequest(job_id=_job_id(job)))

    def resume(self, job: JobRef) -> None:
        """Re-runs the failed or cancelled tasks of a job; done tasks are kept."""
        self._call(self._stub.ResumeJob, pb.ResumeJobRequest(job_id=_job_id(job)))

    def workers(self) -> List[Worker]:
        resp = self._call(self._stub.ListWorkers, pb.ListWorkersRequest())
        return [Worker(w.worker_id, w.name, w.gpu, w.memory_bytes, w.device_memory_bytes,
                       _time(w.last_seen_ms), list(w.tasks)) for w in resp.workers]

    def wait(self, job: JobRef) -> Job:
        """Follows the job until it ends (watch() without the events); its final status."""
        for _ in self.watch(job):
            pass
        return self.status(job)

    def watch(self, job: JobRef, from_seq: int = 1, reconnect_for: float = 30.0) -> Iterator[Event]:
        """Yields the job's events from `from_seq` until it ends, each with the job's progress.
        A broken stream (a coordinator restart) is resumed from the next event for up to
        `reconnect_for` seconds."""
        job_id = _job_id(job)
        status = self._call(self._stub.GetJob, pb.GetJobRequest(job_id=job_id, include_tasks=True))
        total = len(status.tasks)
        done = sum(1 for t in status.tasks if t.state == job_pb2.TASK_DONE) if from_seq > 1 else 0
        next_seq, broken_since = max(from_seq, 1), None
        while True:
            try:
                stream = self._stub.WatchJob(pb.WatchJobRequest(job_id=job_id, from_seq=next_seq),
                                             metadata=self._metadata)
                for e in stream:
                    broken_since = None
                    kind = (job_pb2.EventKind.Name(e.kind)[len("EVENT_"):].lower()
                            if e.kind else e.legacy_kind)
                    if kind in ("task_done", "task_reused"):
                        done += 1
                    elif kind in ("task_rerun", "job_resumed"):
                        done = self._done_now(job_id, done)
                    next_seq = e.seq + 1
                    yield Event(e.seq, _time(e.time_ms), kind, e.task_id, e.message, done, total)
                return
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.UNAVAILABLE:
                    raise MoecError(err.code(), err.details() or "") from None
                broken_since = broken_since or time.monotonic()
                if time.monotonic() - broken_since > reconnect_for:
                    raise MoecError(err.code(), err.details() or "") from None
                time.sleep(0.5)

    def _done_now(self, job_id: str, fallback: int) -> int:
        try:
            resp = self._call(self._stub.GetJob, pb.GetJobRequest(job_id=job_id, include_tasks=True))
        except MoecError:
            return fallback
        return sum(1 for t in resp.tasks if t.state == job_pb2.TASK_DONE)

    # --- reports ---

    def report(self, job: JobRef) -> dict:
        """What `moec report JOB --json` prints: {"job_id", "name", "state", "tasks",
        "evaluations": [{"stage", "model": {"perplexity", "size_bytes", "average_expert_bits",
        ...}, "baseline": {...}}], "time": {...}} (docs/cli.md "report")."""
        resp = self._call(self._stub.GetJobReport, pb.GetJobReportRequest(job_id=_job_id(job)))
        return json.loads(resp.report_json)

    def report_files(self, job: JobRef, out_dir: Optional[str] = None) -> Dict[str, str]:
        """The report's files (report.md, report.json and the SVG figures), name -> content, as
        `moec report JOB --out DIR` writes them; written into `out_dir` too when given."""
        resp = self._call(self._stub.GetJobReport,
                          pb.GetJobReportRequest(job_id=_job_id(job), include_files=True))
        files = dict(resp.files)
        if out_dir is not None:
            os.makedirs(out_dir, exist_ok=True)
            for name, content in files.items():
                if "/" in name or name.startswith("."):
                    raise MoecError(grpc.StatusCode.DATA_LOSS, "report file name %r is not a plain name" % name)
                with open(os.path.join(out_dir, name), "w") as f:
                    f.write(content)
        return files
