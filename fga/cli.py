"""The `fga` command: one verb per pipeline stage, each reading params.yaml (+ --set overrides).

User errors (bad params, missing or corrupt inputs) print one line and exit with status 2.
With FGA_STARTUP_LOG=FILE set, every run appends one JSON line to FILE: when the process started, when its
start-up (imports, params) ended, when it ended, its seconds in MLflow logging and the heavy packages it loaded
(read by benchmarks/bench_workflow.py).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from fga.errors import UserError
from fga.grid import DEFAULT_TEXT_ENCODER, run_path, run_text_encoder

STARTUP_LOG_ENV = "FGA_STARTUP_LOG"
# Packages a pipeline job should load only in the verbs that use them (bench_workflow.py, tests/test_cli.py)
HEAVY_PACKAGES = ("timm", "mlflow", "seaborn", "matplotlib", "pandas", "torchvision", "torch._dynamo")


def process_start_time() -> float:
    """Epoch seconds at which this process started (Linux /proc, 10 ms ticks); now where /proc is unreadable."""
    try:
        after_name = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started_after_boot = int(after_name[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return time.time()
    return time.time() - (uptime - started_after_boot)


def loaded_heavy_packages() -> list[str]:
    return [name for name in HEAVY_PACKAGES if name in sys.modules]


class JobTimeline:
    """Where one fga process spent its wall time: start-up (interpreter, imports, params) until `ready`,
    the work, and the time inside experiment tracking; appended to $FGA_STARTUP_LOG for bench_workflow.py."""

    def __init__(self, verb: str) -> None:
        self.verb = verb
        self.started = process_start_time()
        self.ready_at: float | None = None
        self.packages_at_ready: list[str] = []
        self.tracking_s = 0.0

    def ready(self) -> None:
        """Mark the end of start-up: the verb's modules are imported and its params loaded."""
        if self.ready_at is None:
            self.ready_at = time.time()
            self.packages_at_ready = loaded_heavy_packages()

    @contextlib.contextmanager
    def tracking(self) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.tracking_s += time.perf_counter() - t0

    def record(self, path: str, status: int) -> None:
        """Append one JSON line; a single O_APPEND write, so parallel jobs never interleave their lines."""
        ended = time.time()
        line = json.dumps({"verb": self.verb, "argv": sys.argv[1:], "pid": os.getpid(), "status": status,
                           "started": self.started, "ready": self.ready_at or ended, "ended": ended,
                           "tracking_s": round(self.tracking_s, 4), "packages_at_ready": self.packages_at_ready,
                           "packages_at_end": loaded_heavy_packages()}) + "\n"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--configfile", dest="overlays", action="extend", nargs="+", default=[], metavar="FILE",
                   help="overlay YAML files merged over the params file in order, as snakemake --configfile "
                        "(e.g. configs/paper.yaml local.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a parameter, e.g. --set train.epochs=2 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--defer-tracking", action="store_true",
                   help="keep the stage's MLflow run on disk (logs/tracking_pending/) instead of logging it: no MLflow "
                        "in the job; `fga tracking sync` or `fga report` logs it (the Snakemake workflow passes this)")


def _run_args(p: argparse.ArgumentParser, *, method: bool = True) -> None:
    p.add_argument("--dataset", required=True)
    p.add_argument("--backbone", required=True)
    if method:
        p.add_argument("--method", required=True)
        p.add_argument("--seed", type=int, required=True)
        _text_encoder_arg(p)


def _text_encoder_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--text-encoder", help="the run's caption encoder, a grid.text_encoders name (default: "
                                          "train.text_encoder); the run lives under <dataset>/<backbone>/<encoder>/")


def file_hash(path: Path) -> str:
    if not path.exists():
        return "missing"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def run_dir(cfg: dict[str, Any], kind: str, a: argparse.Namespace) -> Path:
    """The run's directory under the params' experiment's `kind` root ("runs" or "results", fga/paths.py)."""
    from fga.paths import output_roots

    return Path(getattr(output_roots(cfg), kind)) / run_path(a.dataset, a.backbone, run_text_encoder(cfg), a.method,
                                                              a.seed)


def cmd_data_prepare(cfg: dict[str, Any], a: argparse.Namespace) -> None:
    out = Path("data") / a.dataset
    if a.dataset == "synthetic":
        from fga.data.synthetic import generate

        a.timeline.ready()
        generate(out, progress=not a.quiet, dry_run=a.dry_run, **cfg["data"]["synthetic"])
    else:
        from fga.data.prepare import prepare

        a.timeline.ready()
        prepare(a.dataset, cfg["data"].get(a.dataset, {}), out, dry_run=a.dry_run, progress=not a.quiet)


def cmd_features_text(cfg: dict[str, Any], a: argparse.Namespace) -> None:
    from fga.features.text import build_vocab_file, vocab_file

    a.timeline.ready()
    build_vocab_file(Path("data") / a.dataset / "dataset.json", vocab_file(a.dataset),
                     cfg["features"]["text"]["min_count"])


def cmd_features_text_encode(cfg: dict[str, Any], a: argparse.Namespace) -> None:
    from fga.features.text import extract_text, text_store_dir

    if a.encoder == DEFAULT_TEXT_ENCODER:  # the BiGRU's text features are its vocabulary
        cmd_features_text(cfg, a)
        return
    a.timeline.ready()
    extract_text(cfg, a.dataset, a.encoder, Path("data") / a.dataset, text_store_dir(a.dataset, a.encoder), quiet=a.quiet)


def cmd_features_extract(cfg: dict[str, Any], a: argparse.Namespace) -> None:
    from fga.features.build import build_features

    a.timeline.ready()
    data_dir = Path("data") / a.dataset
    if not (data_dir / "dataset.json").exists():
        raise UserError(f"{data_dir / 'dataset.json'} not found; run `fga data prepare --dataset {a.dataset}` first")
    build_features(cfg, a.dataset, a.backbone, data_dir, Path("features") / a.dataset / a.backbone, quiet=a.quiet)


def _key(cfg: dict[str, Any], a: argparse.Namespace, stage: str) -> dict[str, Any]:
    return {"dataset": a.dataset, "backbone": a.backbone, "text": run_text_encoder(cfg), "method": a.method,
            "seed": a.seed, "stage": stage}


def _provenance(cfg: dict[str, Any], a: argparse.Namespace) -> dict[str, str]:
    from fga.runs import run_hash

    return {"params_hash": run_hash(cfg, a.dataset, a.backbone, a.method, a.seed),
            "data_hash": file_hash(Path("data") / a.dataset / "dataset.json")}


def cmd_train(cfg: dict[str, Any], a: argparse.Namespace) -> None:
    from fga.tracking_sync import log_train_run
    from fga.train import train

    a.timeline.ready()
    meta = train(cfg, a.dataset, a.backbone, a.method, a.seed, run_dir(cfg, "runs", a), quiet=a.quiet)
    if meta.get("rank", 0) != 0:
        return  # under torchrun only rank 0 logs the run
    with a.timeline.tracking():
        log_train_run(cfg, _key(cfg, a, "train"), meta, run_dir(cfg, "runs", a) / "checkpoint.safetensors",
                      tags=_provenance(cfg, a), defer=a.defer_tracking)


def cmd_evaluate(cfg: dict[str, Any], a: argparse.Namespace) -> None:
    from fga.config import evaluation_section
    from fga.evaluate.run import evaluate, mlflow_metrics
    from fga.io import write_json
    from fga.tracking_sync import log_or_keep as log_run
    from fga.tracking_params import resolved_run_params

    a.timeline.ready()
    out_dir = run_dir(cfg, "results", a)
    metrics = evaluate(cfg, a.dataset, a.backbone, a.method, a.seed, run_dir(cfg, "runs", a) / "checkpoint.safetensors",
                       quiet=a.quiet, out_dir=out_dir)
    out = out_dir / "metrics.json"
    write_json(out, metrics)  # last: its presence means ranks.npz (and the matrix) are complete
    with a.timeline.tracking():
        log_run(cfg, _key(cfg, a, "evaluate"), defer=a.defer_tracking,
                params={**resolved_run_params(cfg, a.backbone, a.method), "evaluate": evaluation_section(cfg, a.dataset)},
                metrics=mlflow_metrics(metrics),
                tags={**_provenance(cfg, a), "protocol": metrics["protocol"], "protocols": ",".join(metrics["protocols"]),
                      "split": metrics["split"], "weights_source": metrics["weights_source"]},
                artifacts=[out, out_dir / "ranks.npz", out_dir / "attention.json"])


def cmd_robustness(cfg: dict[str, Any], a: argparse.Namespace) -> None:
    if a.action == "distractors":
        from fga.evaluate.robustness_run import make_distractor_data, make_distractor_features

        a.timeline.ready()
        if a.backbone is None:
            make_distractor_data(cfg, a.n, quiet=a.quiet)
        else:
            make_distractor_features(cfg, a.n, a.backbone, quiet=a.quiet)
        return
    missing = [f"--{k}" for k in ("dataset", "backbone", "method", "seed") if getattr(a, k) is None]
    if missing:
        raise UserError(f"fga robustness needs {', '.join(missing)} (or the `distractors` action)")
    from fga.evaluate.robustness_run import mlflow_metrics, robustness
    from fga.io import write_json
    from fga.tracking_sync import log_or_keep as log_run

    a.timeline.ready()
    out_dir = run_dir(cfg, "results", a)
    checkpoint = run_dir(cfg, "runs", a) / "checkpoint.safetensors"
    result = robustness(cfg, a.dataset, a.backbone, a.method, a.seed, checkpoint, quiet=a.quiet, results_dir=out_dir)
    out = out_dir / "robustness.json"
    write_json(out, result)
    with a.timeline.tracking():
        log_run(cfg, _key(cfg, a, "robustness"), defer=a.defer_tracking,
                params={"robustness": cfg.get("robustness", {})},
                metrics=mlflow_metrics(result),
                tags={**_provenance(cfg, a), "protocol": result["protocol"], "split": result["split"],
                      "weights_source": result["weights_source"]}, artifacts=[out])


def cmd_report(cfg: dict[str, Any], a: argparse.Namespace) -> None:
    if a.compare is not None:
        from fga.report.compare import experiment_names, write_comparison

        a.timeline.ready()
        write_comparison(cfg, experiment_names(a.compare), quiet=a.quiet)
        return
    from fga.report import write_report

    a.timeline.ready()
    if a.from_files:
        cfg = {**cfg, "report": {**cfg["report"], "source": "files"}}
    if cfg["report"].get("source") != "files":
        from fga.tracking_sync import sync

        sync(cfg, quiet=a.quiet)  # the runs a tracking server missed belong in the report
    write_report(cfg, quiet=a.quiet)


def cmd_tracking_sync(cfg: dict[str, Any], a: argparse.Namespace) -> None:
    from fga.tracking_sync import pending_dir, sync

    a.timeline.ready()
    n = sync(cfg, quiet=a.quiet)
    print(f"{n} kept runs logged to {cfg['tracking']['uri']}" if n else f"nothing to sync: no kept runs in {pending_dir(cfg)}")


def cmd_dvc_record(cfg: dict[str, Any], a: argparse.Namespace) -> None:
    from fga.versioning import record_in_dvc

    a.timeline.ready()
    if a.overrides or a.overlays:
        raise UserError("fga dvc-record takes no --set or --configfile: it records outputs made with the params file "
                        "as it is")
    print(record_in_dvc(Path(a.params)))


def _add_report(verbs: Any) -> None:
    p = verbs.add_parser("report", help="MLflow runs -> reports/tables and reports/figures "
                                        "(experiment <name>: reports/<name>/tables and figures)")
    p.add_argument("--compare", metavar="EXP,EXP[,...]",
                   help="instead: the main table of each listed experiment side by side, with the rSum "
                        "difference to the first -> reports/compare/")
    p.add_argument("--from-files", action="store_true",
                   help="read the DVC-tracked results/ files instead of MLflow (= --set report.source=files); "
                        "logs no report run")
    _common(p)
    p.set_defaults(func=cmd_report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fga", description="fine-grained image-text matching benchmark pipeline")
    verbs = parser.add_subparsers(dest="verb", required=True)

    data = verbs.add_parser("data", help="datasets").add_subparsers(dest="action", required=True)
    p = data.add_parser("prepare", help="download/generate a dataset into data/<dataset>/")
    p.add_argument("--dataset", required=True)
    p.add_argument("--dry-run", action="store_true", help="print what would be downloaded or generated; fetch and write nothing")
    _common(p)
    p.set_defaults(func=cmd_data_prepare)

    feats = verbs.add_parser("features", help="feature store").add_subparsers(dest="action", required=True)
    p = feats.add_parser("extract", help="region features of every split -> features/<dataset>/<backbone>/")
    _run_args(p, method=False)
    _common(p)
    p.set_defaults(func=cmd_features_extract)
    p = feats.add_parser("text", help="train-caption vocabulary -> features/<dataset>/text_bigru/vocab.json")
    p.add_argument("--dataset", required=True)
    _common(p)
    p.set_defaults(func=cmd_features_text)
    p = feats.add_parser("text-encode", help="transformer token features of every caption -> features/<dataset>/text_<encoder>/")
    p.add_argument("--dataset", required=True)
    p.add_argument("--encoder", default="minilm", help="a features.text.encoders entry (default: the packaged "
                                                       "MiniLM), or bigru: its vocabulary, as `fga features text`")
    _common(p)
    p.set_defaults(func=cmd_features_text_encode)

    for verb, func, help_ in [("train", cmd_train, "train one run -> runs/.../checkpoint.safetensors"),
                              ("evaluate", cmd_evaluate, "recall of one run -> results/.../metrics.json")]:
        p = verbs.add_parser(verb, help=help_)
        _run_args(p)
        _common(p)
        p.set_defaults(func=func)

    p = verbs.add_parser("robustness", help="recall per clutter bin and vs distractors -> results/.../robustness.json")
    p.add_argument("--dataset")
    p.add_argument("--backbone")
    p.add_argument("--method")
    p.add_argument("--seed", type=int)
    _text_encoder_arg(p)
    _common(p)
    p.set_defaults(func=cmd_robustness, action=None)
    sub = p.add_subparsers(dest="action")
    q = sub.add_parser("distractors", help="synthetic test images with N extra distractors -> data/synthetic_distract<N>/ "
                                           "(with --backbone: their features -> features/synthetic_distract<N>/<backbone>/test.h5)")
    q.add_argument("--n", type=int, required=True, help="extra distractor objects per test image")
    q.add_argument("--backbone", help="also extract the features of this backbone")
    _common(q)

    _add_report(verbs)

    tracking = verbs.add_parser("tracking", help="experiment tracking").add_subparsers(dest="action", required=True)
    p = tracking.add_parser("sync", help="log the runs an unreachable tracking server missed (kept in logs/tracking_pending/)")
    _common(p)
    p.set_defaults(func=cmd_tracking_sync)

    p = verbs.add_parser("dvc-record", help="record the outputs in DVC's cache and dvc.lock (the end of `make run`)")
    _common(p)
    p.set_defaults(func=cmd_dvc_record)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.timeline = JobTimeline(" ".join(filter(None, [args.verb, getattr(args, "action", None)])))
    status = 1  # an uncaught exception
    try:
        status = _run_verb(args)
    finally:
        log = os.environ.get(STARTUP_LOG_ENV)
        if log:
            args.timeline.record(log, status)
    return status


def _run_verb(args: argparse.Namespace) -> int:
    try:
        from fga.config import load_params

        # a run's --text-encoder is its train.text_encoder: validated, hashed and checkpointed like any other key
        text = getattr(args, "text_encoder", None)
        overrides = [*args.overrides, *([f"train.text_encoder={text}"] if text else [])]
        cfg = load_params(args.params, overrides, getattr(args, "overlays", ()))
        func: Callable[[dict[str, Any], argparse.Namespace], None] = args.func
        func(cfg, args)
    except UserError as exc:
        print(f"fga: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fga: interrupted; outputs written so far are complete files, rerun to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
