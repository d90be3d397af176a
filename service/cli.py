"""The `autocompress` command: serve, worker, db, demo, evaluate.

    autocompress demo                     # the whole product on this machine, embedded
    autocompress serve [--host --port]    # the HTTP API (embedded workers unless a broker is set)
    autocompress worker [--concurrency]   # a Celery worker (one process per GPU)
    autocompress db upgrade|current       # Alembic: the only way the schema changes
    autocompress apikey create --name ci [--admin]  # prints a token once; stored as an HMAC
    autocompress apikey list | revoke ID  # a revoked key gets 401
    autocompress submit job.json --wait   # the client verbs (client/commands.py): submit, jobs,
    autocompress status|trials|pareto|cancel JOB   # status, trials, pareto, download, export,
    autocompress download|export TRIAL    # cancel; server from AUTOCOMPRESS_URL/_API_KEY
    autocompress evaluate CKPT --dataset builtin:mnist
    autocompress export CKPT --format onnx|pt2 --output model.onnx   # here, from a checkpoint
    autocompress apply --architecture lenet-300-100 --weights w.safetensors \
        --dataset builtin:mnist --strategy '[{"op": "mpd", "blocks": 10}]' \
        --finetune '{"method": "masked", "epochs": 2}' --output packed.acpk
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from service.core.logs import configure_logging
from service.core.settings import get_settings


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.main import create_app

    settings = get_settings()
    uvicorn.run(
        create_app(settings),
        host=args.host or settings.host,
        port=args.port or settings.port,
        log_level=args.log_level,
        log_config=None,  # keep the handler of service.core.logs (plain or JSON lines)
    )
    return 0


def _worker(args: argparse.Namespace) -> int:
    from service.core.db import check_schema
    from workers.celery_app import app
    from workers.celery_config import QUEUE

    settings = get_settings()
    if settings.embedded:
        print("autocompress worker needs AUTOCOMPRESS_BROKER_URL (e.g. redis://localhost:6379/0)")
        return 2
    check_schema(settings.database_url)
    argv = [
        "worker",
        f"--loglevel={args.log_level.upper()}",
        f"--concurrency={args.concurrency}",
        "--pool=prefork",
        f"--queues={QUEUE}",
        "--without-gossip",
        "--without-mingle",
    ]
    app.worker_main(argv)
    return 0


def _db(args: argparse.Namespace) -> int:
    from service.core.db import schema_status, upgrade

    settings = get_settings()
    if args.action == "upgrade":
        upgrade(settings.database_url)
    current, head = schema_status(settings.database_url)
    print(json.dumps({"current": current, "head": head, "up_to_date": current == head}))
    return 0 if current == head or args.action == "current" else 1


def _apikey(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from service.core.auth import create_api_key
    from service.core.db import ApiKey, db_now, prepare_database, session_scope

    settings = get_settings()
    settings.ensure_dirs()  # a first `apikey create` may come before the server ever ran
    prepare_database(settings.database_url, auto_upgrade=settings.is_sqlite)
    with session_scope(settings.database_url) as session:
        if args.action == "create":
            key, token = create_api_key(
                session, args.name, settings.secret_key.get_secret_value(), admin=args.admin
            )
            print(json.dumps({"id": key.id, "name": key.name, "admin": key.admin, "token": token}))
            print("the token is shown only now; the server stores only its HMAC", file=sys.stderr)
        elif args.action == "revoke":
            key_id = args.key_id if args.key_id is not None else args.id
            key = session.get(ApiKey, key_id) if key_id is not None else None
            if key is None:
                print(f"no API key {key_id}", file=sys.stderr)
                return 1
            key.revoked_at = db_now(session)
            print(json.dumps({"id": key.id, "name": key.name, "revoked": True}))
        else:
            for key in session.scalars(select(ApiKey).order_by(ApiKey.id)):
                print(json.dumps({"id": key.id, "name": key.name, "prefix": key.prefix,
                                  "admin": key.admin, "revoked": key.revoked_at is not None}))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import torch

    from operators import compute_metrics, load_checkpoint, load_dataset

    settings = get_settings()
    device = torch.device(args.device)
    model, manifest = load_checkpoint(Path(args.checkpoint), device=device)
    dataset = load_dataset(args.dataset, settings.data_roots)
    recorded = (manifest.get("metadata") or {}).get("baseline") or {}
    given = {"accuracy": args.baseline_accuracy, "size_bytes": args.baseline_size_bytes}
    baseline = {
        name: given[name] if given[name] is not None else recorded.get(name) for name in given
    }
    metrics = compute_metrics(
        model,
        dataset,
        checkpoint_path=Path(args.checkpoint),
        baseline=baseline,  # a missing figure leaves out the metric derived from it
        device=device,
        latency_batch_size=args.batch_size,
    )
    print(json.dumps(metrics))
    return 0


def _export(args: argparse.Namespace) -> int:
    """`export CHECKPOINT`: export a packed checkpoint file here; `export TRIAL` (a trial id,
    not a file): download the export the server makes (the client verb)."""
    if not Path(args.target).is_file() and args.target.isdigit():
        from client.commands import export_trial, run

        args.trial = int(args.target)
        return run(export_trial, args)
    from operators.export import MissingExtra, export_checkpoint

    output = Path(args.output or Path(args.target).with_suffix(f".{args.format}").name)
    shape = _json_arg(args.input_shape, "--input-shape") if args.input_shape else None
    try:
        size = export_checkpoint(Path(args.target), args.format, output, input_shape=shape)
    except FileNotFoundError:
        print(f"error: no checkpoint file {args.target}", file=sys.stderr)
        return 1
    except (ValueError, MissingExtra) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"checkpoint": args.target, "format": args.format, "path": str(output),
                      "size_bytes": size}))  # fmt: skip
    return 0


def _json_arg(text: str, name: str):
    """A JSON command-line value, or the JSON in a file given as ``@path``."""
    try:
        return json.loads(Path(text[1:]).read_text() if text.startswith("@") else text)
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"--{name}: not valid JSON ({exc})") from None


def _apply(args: argparse.Namespace) -> int:
    import tempfile

    import torch

    from operators import (
        evaluate,
        load_dataset,
        load_weights,
        run_strategy,
        save_checkpoint,
        save_dense_checkpoint,
    )

    config = _json_arg(args.config, "config")
    steps = _json_arg(args.strategy, "strategy")
    spec = dict(_json_arg(args.finetune, "finetune"))
    device = torch.device(args.device)
    key_map = _json_arg(args.key_map, "key-map") if args.key_map else None
    try:
        model = load_weights(Path(args.weights), args.architecture, config, key_map=key_map,
                             max_params=get_settings().max_model_params)
    except ValueError as exc:  # a SourceError names the field: --architecture, --config, ...
        raise SystemExit(f"{getattr(exc, 'field', 'weights')}: {exc}") from None
    dataset = load_dataset(args.dataset, get_settings().data_roots)
    with tempfile.TemporaryDirectory() as tmp:
        dense_bytes = save_dense_checkpoint(
            model, Path(tmp) / "dense.safetensors", architecture=args.architecture, config=config
        )
    baseline = {"accuracy": evaluate(model, dataset, device=device)["accuracy"],
                "size_bytes": dense_bytes}  # fmt: skip
    try:  # staged strategies too: a step's own finetune, a schedule (operators.train.staged)
        cm = run_strategy(model.cpu(), steps, dataset, spec,
                          example_input=dataset.calibration_batch(), seed=args.seed, device=device)  # fmt: skip
    except ValueError as exc:
        raise SystemExit(f"--strategy: {exc}") from None
    cm.model.to("cpu")
    size = save_checkpoint(
        cm,
        Path(args.output),
        architecture=args.architecture,
        config=config,
        metadata={"strategy": steps, "baseline": baseline, "report": cm.report},
    )
    print(json.dumps({"output": args.output, "size_bytes": size, "baseline": baseline,
                      "compression_ratio": dense_bytes / size}))  # fmt: skip
    return 0


def _demo(args: argparse.Namespace) -> int:
    from service.demo import run_demo

    return run_demo(trials=args.trials, epochs=args.epochs, seed=args.seed, port=args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autocompress", description=__doc__.split("\n")[0])
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the HTTP API (uvicorn)")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    p.set_defaults(func=_serve)

    p = sub.add_parser("worker", help="run a Celery worker (distributed mode)")
    p.add_argument("--concurrency", type=int, default=1, help="trials at once (1 per GPU)")
    p.set_defaults(func=_worker)

    p = sub.add_parser("db", help="database schema (Alembic)")
    p.add_argument("action", choices=["upgrade", "current"])
    p.set_defaults(func=_db)

    p = sub.add_parser("apikey", help="create, list or revoke API keys")
    p.add_argument("action", choices=["create", "list", "revoke"])
    p.add_argument("--name", default="default")
    p.add_argument("key_id", nargs="?", type=int, default=None, help="the key to revoke")
    p.add_argument("--id", type=int, default=None, help="the key to revoke")
    p.add_argument("--admin", action="store_true", help="create: a key that sees every tenant")
    p.set_defaults(func=_apikey)

    p = sub.add_parser("demo", help="train LeNet-300-100 on MNIST and compress it, end to end")
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--epochs", type=float, default=1.0,
                   help="fine-tuning epochs per stage (the demo's strategy has three stages)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--port", type=int, default=0, help="0 = a free port")
    p.set_defaults(func=_demo)

    p = sub.add_parser("evaluate", help="print the metrics of a checkpoint as JSON")
    p.add_argument("checkpoint")
    p.add_argument("--dataset", required=True, help="e.g. builtin:mnist")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=1, help="batch size of latency_ms")
    p.add_argument(
        "--baseline-accuracy",
        type=float,
        default=None,
        help="accuracy of the uncompressed model (default: the one the checkpoint records); "
        "without either, accuracy_drop is left out",
    )
    p.add_argument(
        "--baseline-size-bytes",
        type=int,
        default=None,
        help="size of the dense fp32 checkpoint (default: the one the checkpoint records); "
        "without either, compression_ratio is left out",
    )
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("export", help="export a packed checkpoint (or, given a trial id, the "
                       "server's export of that trial) as ONNX or .pt2")  # fmt: skip
    p.add_argument("target", metavar="CHECKPOINT|TRIAL",
                   help="a packed checkpoint file, or the id of a trial on the server")  # fmt: skip
    p.add_argument("--format", choices=("onnx", "pt2"), default="onnx")
    p.add_argument("--output", default=None, help="file to write (default: NAME.onnx / NAME.pt2)")
    p.add_argument("--input-shape", default=None,
                   help="per-sample input shape as JSON, e.g. [1, 28, 28] (default: the one "
                   "the checkpoint records)")  # fmt: skip
    p.add_argument("--url", default=None, help="with a trial id: the server ($AUTOCOMPRESS_URL)")
    p.add_argument("--api-key", default=None, help="with a trial id: $AUTOCOMPRESS_API_KEY")
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    p.set_defaults(func=_export)

    p = sub.add_parser("apply", help="compress a model with a strategy and write its checkpoint")
    p.add_argument("--architecture", required=True,
                   help="source:name, e.g. lenet-300-100 (zoo), timm:resnet18, "
                   "hf:image-classification, torchvision:resnet18")  # fmt: skip
    p.add_argument("--config", default="{}",
                   help="JSON keyword arguments of the architecture (hf: a config.json object)")
    p.add_argument("--weights", required=True, help="a safetensors state_dict")
    p.add_argument("--key-map", default=None,
                   help='JSON renaming the weights: {"old": "new"} or {"prefix": {"0.": "fc1."}}')
    p.add_argument("--dataset", required=True, help="e.g. builtin:mnist")
    p.add_argument("--strategy", required=True, help="JSON list of steps, or @file.json")
    p.add_argument("--finetune", default='{"method": "none"}', help="JSON fine-tune settings")
    p.add_argument("--output", required=True, help="path of the packed checkpoint")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_apply)

    from client.commands import add_commands

    add_commands(sub, taken=set(sub.choices))  # submit, jobs, status, trials, pareto, ...
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(get_settings(), args.log_level)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
