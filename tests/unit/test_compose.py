"""docker-compose.yml, the Dockerfiles and .env.example against the code they run.

No Docker engine runs where the tests run, so the deployment is checked by reading it: every
command must parse with the real CLI parsers (kensaku's argparse, Celery's and uvicorn's click,
Flower's tornado options) and name modules, apps, queues and settings that exist; every service
must be health-checked or wait on a condition; secrets must have no defaults; Redis must keep
what it accepts; Flower must ask for credentials and listen on loopback only; the GPU worker must
be opt-in, reserve a GPU and run the solo pool.

`compose_problems` returns the list of problems instead of asserting, so one test can feed it a
deliberately broken file and require each rule to fire (a checker that cannot fail proves
nothing), and another can run it on the real file with facts taken from the code.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import shlex
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML (installed with uvicorn[standard])")

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"

SECRET_NAME = re.compile(r"(PASSWORD|SECRET|TOKEN|API_KEYS?|_KEY|_AUTH)$")
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?err}, ${NAME?err}, ${NAME:+alt}
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")
BARE_VARIABLE = re.compile(r"\$[A-Za-z_]")
URL_CREDENTIALS = re.compile(r"[a-z][a-z0-9+.-]*://[^:/@\s]*:([^@\s/]+)@")
REQUIRED_MARK = "<required>"
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class CodeFacts:
    """What the code offers, so the checker can run against the real code or a stand-in."""

    queues: frozenset[str]
    settings_fields: frozenset[str]
    # Each returns an error message, or None when fine.
    check_kensaku: Callable[[list[str]], str | None]
    check_import: Callable[[str], str | None]
    http_routes: Callable[[str], frozenset[str]]


# --- helpers ------------------------------------------------------------------------------------
def _scalars(node: Any) -> Iterator[str]:
    """Every string in the parsed file, keys included (comments are not part of it)."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _scalars(k)
            yield from _scalars(v)
    elif isinstance(node, list):
        for v in node:
            yield from _scalars(v)
    elif isinstance(node, str):
        yield node


def _interpolations(text: str) -> list[tuple[str, str, str]]:
    return INTERPOLATION.findall(text.replace("$$", ""))


def substitute(text: str) -> str:
    """What compose would produce with no variables set, except that required ones become "x"."""

    def repl(m: re.Match[str]) -> str:
        _, op, arg = m.groups()
        if op in ("-", ":-"):
            return arg
        if op in ("?", ":?"):
            return "x"
        return ""

    return INTERPOLATION.sub(repl, text.replace("$$", "\0")).replace("\0", "$")


def _mark_required(text: str) -> str:
    """Replace required interpolations by a marker, others by their default."""
    marked = INTERPOLATION.sub(
        lambda m: REQUIRED_MARK if m[2] in ("?", ":?") else "${" + m[1] + "}", text
    )
    return substitute(marked)


def _argv(command: Any) -> list[str]:
    if command is None:
        return []
    if isinstance(command, str):
        return shlex.split(substitute(command))
    return [substitute(str(a)) for a in command]


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) for item in env)
        return {p[0]: (p[1] if len(p) > 1 else "") for p in pairs}
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _healthcheck_argvs(service: dict[str, Any]) -> list[list[str]]:
    """The commands a healthcheck runs; shell pipelines are split at | && || ;."""
    test = (service.get("healthcheck") or {}).get("test")
    if not test:
        return []
    if isinstance(test, str):
        test = ["CMD-SHELL", test]
    kind, rest = test[0], list(test[1:])
    if kind == "CMD":
        return [[substitute(a) for a in rest]]
    if kind == "CMD-SHELL":
        script = substitute(" ".join(rest))
        return [shlex.split(part) for part in re.split(r"\|\||&&|\||;", script) if part.strip()]
    return []


def _strip_env_prefix(argv: list[str]) -> list[str]:
    """`env -u NAME cmd ...` / `env K=V cmd ...` -> `cmd ...`."""
    if not argv or argv[0] != "env":
        return argv
    i = 1
    while i < len(argv):
        if argv[i] == "-u":
            i += 2
        elif argv[i].startswith("-") or "=" in argv[i]:
            i += 1
        else:
            break
    return argv[i:]


def _option(argv: list[str], *names: str) -> str | None:
    """Value of a short/long option in `-Q x`, `--queues x` or `--queues=x` form."""
    for i, a in enumerate(argv):
        for n in names:
            if a == n and i + 1 < len(argv):
                return argv[i + 1]
            if n.startswith("--") and a.startswith(n + "="):
                return a.split("=", 1)[1]
    return None


# --- the real CLI parsers of the tools the services run -----------------------------------------
def _click_rest(ctx: Any) -> list[str]:
    # Click 8.2 deprecated `protected_args`; the unparsed subcommand lives in `_protected_args`.
    protected = getattr(ctx, "_protected_args", None)
    if protected is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            protected = ctx.protected_args
    return [*protected, *ctx.args]


def _celery_parse(args: list[str]) -> tuple[str | None, str | None, list[str], str | None]:
    """(app, subcommand, subcommand args, error) using Celery's own click definitions."""
    import click
    from celery import Celery
    from celery.bin.base import CLIContext
    from celery.bin.celery import celery

    # Some worker options take their defaults from the app's configuration while parsing; a
    # blank app stands in (the real one is checked separately by importing it).
    obj = CLIContext(Celery("compose-check", set_as_current=False), True, None, quiet=True)
    try:
        ctx = celery.make_context("celery", list(args), obj=obj, resilient_parsing=False)
        rest = _click_rest(ctx)
        if not rest:
            return ctx.params.get("app"), None, [], "no celery subcommand"
        cmd = celery.get_command(ctx, rest[0])
        if cmd is None:
            return ctx.params.get("app"), rest[0], [], f"unknown celery subcommand {rest[0]!r}"
        cmd.make_context(rest[0], list(rest[1:]), parent=ctx)
    except click.UsageError as exc:
        return None, None, [], f"celery: {exc.format_message()}"
    return ctx.params.get("app"), rest[0], rest[1:], None


def _flower_option_errors(flower_args: list[str]) -> list[str]:
    from flower.options import options

    known = {name.replace("_", "-") for name in options._options}
    errors = []
    for a in flower_args:
        if a.startswith("--"):
            name = a[2:].split("=", 1)[0].replace("_", "-")
            if name not in known:
                errors.append(f"unknown Flower option --{name}")
    return errors


def _uvicorn_parse(args: list[str]) -> tuple[str | None, str | None]:
    import sys

    import click
    import uvicorn.main  # noqa: F401  (the package attribute `main` is the function, not module)

    command = sys.modules["uvicorn.main"].main
    try:
        ctx = command.make_context("uvicorn", list(args), resilient_parsing=False)
    except click.UsageError as exc:
        return None, f"uvicorn: {exc.format_message()}"
    return ctx.params.get("app"), None


# --- the checker ----------------------------------------------------------------------------------
def _check_command(
    name: str, argv: list[str], facts: CodeFacts, where: str
) -> tuple[list[str], set[str]]:
    """Problems with one command line, and the queues it consumes."""
    problems: list[str] = []
    queues: set[str] = set()
    argv = _strip_env_prefix(argv)
    if not argv:
        return problems, queues
    tool, args = argv[0], argv[1:]
    if tool == "kensaku":
        err = facts.check_kensaku(args)
        if err:
            problems.append(f"{name}: {where} `kensaku {' '.join(args)}`: {err}")
    elif tool == "celery":
        app, sub, sub_args, err = _celery_parse(args)
        if err:
            problems.append(f"{name}: {where}: {err}")
            return problems, queues
        if not app:
            problems.append(f"{name}: {where}: celery without -A")
        else:
            ref = app if ":" in app else f"{app}:app"
            if (err := facts.check_import(ref)) is not None:
                problems.append(f"{name}: {where}: celery app {ref}: {err}")
        if sub == "worker":
            q = _option(sub_args, "-Q", "--queues")
            if not q:
                problems.append(f"{name}: {where}: worker without -Q consumes the default queue")
            else:
                queues = {x for x in q.split(",") if x}
                for unknown in sorted(queues - facts.queues):
                    problems.append(f"{name}: {where}: unknown queue {unknown!r}")
        elif sub == "flower":
            problems += [f"{name}: {where}: {e}" for e in _flower_option_errors(sub_args)]
    elif tool == "uvicorn":
        app, err = _uvicorn_parse(args)
        if err:
            problems.append(f"{name}: {where}: {err}")
        elif app and (err := facts.check_import(app)) is not None:
            problems.append(f"{name}: {where}: ASGI app {app}: {err}")
    elif where == "command":
        problems.append(f"{name}: unknown command {tool!r}")
    return problems, queues


def _is_ours(service: dict[str, Any]) -> bool:
    argv = _argv(service.get("command"))
    return "build" in service or (bool(argv) and argv[0] in ("kensaku", "celery", "uvicorn"))


def _is_flower(service: dict[str, Any]) -> bool:
    argv = _argv(service.get("command"))
    return argv[:1] == ["celery"] and "flower" in argv


def _gpu_reservations(service: dict[str, Any]) -> list[dict[str, Any]]:
    deploy = service.get("deploy") or {}
    devices = ((deploy.get("resources") or {}).get("reservations") or {}).get("devices") or []
    return [d for d in devices if "gpu" in (d.get("capabilities") or [])]


def _published_host_ips(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(raw entry, host ip after default substitution) for each published port."""
    out = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            out.append((str(entry), substitute(str(entry.get("host_ip", "")))))
            continue
        parts = substitute(str(entry)).split(":")
        out.append((str(entry), parts[0] if len(parts) == 3 else ""))
    return out


def _volume_targets(service: dict[str, Any]) -> list[str]:
    targets = []
    for v in service.get("volumes") or []:
        if isinstance(v, dict):
            targets.append(str(v.get("target", "")))
        else:
            parts = str(v).split(":")
            targets.append(parts[1] if len(parts) > 1 else parts[0])
    return targets


def compose_problems(compose: dict[str, Any], facts: CodeFacts) -> list[str]:
    problems: list[str] = []
    services: dict[str, dict[str, Any]] = compose.get("services") or {}
    if not services:
        return ["no services"]

    # Variables and secrets, anywhere in the file.
    for text in _scalars(compose):
        if BARE_VARIABLE.search(text.replace("$$", "")):
            problems.append(f"use ${{VAR}} (braces) so the checks can see it: {text!r}")
        for var, op, _ in _interpolations(text):
            if var.startswith("KENSAKU_") and var[8:].lower() not in facts.settings_fields:
                problems.append(f"${{{var}}} is not a Settings field")
            if SECRET_NAME.search(var) and op not in (":?", "?"):
                problems.append(f"secret ${{{var}}} must be required (${{{var}:?message}})")
        for password in URL_CREDENTIALS.findall(_mark_required(text)):
            if password != REQUIRED_MARK:
                problems.append(f"URL with a literal password: {text!r}")

    queues_served: set[str] = set()
    migrate_services: set[str] = set()
    for name, svc in services.items():
        env = _env(svc)
        for key, value in env.items():
            if key.startswith("KENSAKU_") and key[8:].lower() not in facts.settings_fields:
                problems.append(f"{name}: {key} is not a Settings field")
            if SECRET_NAME.search(key) and value and "${" not in value:
                problems.append(f"{name}: secret {key} has a literal value")

        # Health: a healthcheck, or waiting on other services with a condition.
        hc = svc.get("healthcheck") or {}
        has_hc = bool(hc.get("test")) and not hc.get("disable")
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):
            deps = {d: {} for d in deps}
        conditional = [d for d, spec in deps.items() if (spec or {}).get("condition")]
        if not has_hc and not conditional:
            problems.append(f"{name}: neither a healthcheck nor a depends_on condition")
        for dep, spec in deps.items():
            target = services.get(dep)
            condition = (spec or {}).get("condition")
            if target is None:
                problems.append(f"{name}: depends on unknown service {dep!r}")
            elif condition == "service_healthy" and not (target.get("healthcheck") or {}).get(
                "test"
            ):
                problems.append(f"{name}: waits for {dep} to be healthy; it has no healthcheck")
            elif condition == "service_completed_successfully" and target.get("restart") not in (
                "no",
                None,
            ):
                problems.append(f"{name}: waits for {dep} to complete; it restarts")

        # Commands and healthcheck commands must parse and name things that exist.
        argv = _argv(svc.get("command"))
        if _is_ours(svc):
            if not argv:
                problems.append(f"{name}: no command (the image default is not checked)")
            found, queues = _check_command(name, argv, facts, "command")
            problems += found
            if not svc.get("profiles"):
                queues_served |= queues
            if argv[:2] == ["kensaku", "migrate"]:
                migrate_services.add(name)
            for hc_argv in _healthcheck_argvs(svc):
                problems += _check_command(name, hc_argv, facts, "healthcheck")[0]
        app_ref = _uvicorn_parse(argv[1:])[0] if argv[:1] == ["uvicorn"] else None
        if app_ref and facts.check_import(app_ref) is None:
            routes = facts.http_routes(app_ref)
            for hc_argv in _healthcheck_argvs(svc):
                for path in re.findall(r"https?://[^/\s'\"]+(/[^\s'\")]*)", " ".join(hc_argv)):
                    if path not in routes:
                        problems.append(f"{name}: healthcheck requests {path}, not a route")

        # Published ports: loopback unless the operator says otherwise.
        for raw, host_ip in _published_host_ips(svc):
            if host_ip != LOOPBACK:
                problems.append(f"{name}: port {raw} is published beyond 127.0.0.1 by default")

        # GPU: opt-in profile, a device reservation, the solo pool, device=cuda.
        gpu = bool(_gpu_reservations(svc)) or env.get("KENSAKU_DEVICE") == "cuda"
        if gpu:
            if "gpu" not in (svc.get("profiles") or []):
                problems.append(f"{name}: GPU service outside the gpu profile")
            if not _gpu_reservations(svc):
                problems.append(f"{name}: GPU service without an NVIDIA device reservation")
            if _option(argv, "-P", "--pool") != "solo":
                problems.append(f"{name}: GPU worker must use the solo pool (-P solo)")
            if env.get("KENSAKU_DEVICE") != "cuda":
                problems.append(f"{name}: GPU worker without KENSAKU_DEVICE=cuda")

    problems += _redis_problems(services)
    problems += _postgres_problems(services)
    problems += _flower_problems(services)

    for missing in sorted(facts.queues - queues_served):
        problems.append(f"no default (profile-less) worker consumes queue {missing!r}")
    if not any(_gpu_reservations(s) for s in services.values()):
        problems.append("no GPU embed worker")
    if not migrate_services:
        problems.append("no service runs `kensaku migrate`")
    for name, svc in services.items():
        argv = _argv(svc.get("command"))
        needs_db = argv[:1] == ["uvicorn"] or (argv[:1] == ["celery"] and "worker" in argv)
        deps = svc.get("depends_on") or {}
        waits = isinstance(deps, dict) and any(
            (deps.get(m) or {}).get("condition") == "service_completed_successfully"
            for m in migrate_services
        )
        if needs_db and not waits:
            problems.append(f"{name}: does not wait for migrate to complete successfully")
    return problems


def _redis_problems(services: dict[str, dict[str, Any]]) -> list[str]:
    redis = {
        n: s
        for n, s in services.items()
        if str(s.get("image", "")).startswith(("redis", "valkey"))
        or _argv(s.get("command"))[:1] == ["redis-server"]
    }
    if not redis:
        return ["no redis service"]
    problems = []
    for name, svc in redis.items():
        args = " ".join(_argv(svc.get("command")))
        for setting in (
            "--appendonly yes",
            "--appendfsync everysec",
            "--maxmemory-policy noeviction",
        ):
            if setting not in args:
                problems.append(f"{name}: redis without `{setting}`")
        if "/data" not in _volume_targets(svc):
            problems.append(f"{name}: redis /data (the AOF) is not on a volume")
    return problems


def _postgres_problems(services: dict[str, dict[str, Any]]) -> list[str]:
    pg = {
        n: s
        for n, s in services.items()
        if "postgres" in str(s.get("image", "")) or "pgvector" in str(s.get("image", ""))
    }
    if not pg:
        return ["no postgres service"]
    problems = []
    for name, svc in pg.items():
        image = str(svc.get("image", ""))
        m = re.fullmatch(r"pgvector/pgvector:(\d+)\.(\d+)\.(\d+)-pg(\d+)(-[a-z]+)?", image)
        if not m or int(m[4]) != 18 or (int(m[1]), int(m[2])) < (0, 8):
            problems.append(f"{name}: image {image!r} is not a pinned pgvector >= 0.8 on PG 18")
        hc = " ".join(" ".join(a) for a in _healthcheck_argvs(svc))
        if "pg_isready" not in hc:
            problems.append(f"{name}: healthcheck does not use pg_isready")
        targets = _volume_targets(svc)
        # PostgreSQL 18 images keep data in /var/lib/postgresql/18/docker.
        if "/var/lib/postgresql" not in targets:
            problems.append(f"{name}: /var/lib/postgresql is not on a volume (PG 18 layout)")
    return problems


def _flower_problems(services: dict[str, dict[str, Any]]) -> list[str]:
    flowers = {n: s for n, s in services.items() if _is_flower(s)}
    if not flowers:
        return ["no flower service"]
    problems = []
    for name, svc in flowers.items():
        raw_cmd = [str(a) for a in (svc.get("command") or [])]
        if isinstance(svc.get("command"), str):
            raw_cmd = shlex.split(svc["command"])
        auth = [a.split("=", 1)[1] for a in raw_cmd if a.startswith("--basic-auth=")]
        auth += [a.split("=", 1)[1] for a in raw_cmd if a.startswith("--basic_auth=")]
        raw_env = svc.get("environment") or {}
        if isinstance(raw_env, dict) and raw_env.get("FLOWER_BASIC_AUTH"):
            auth.append(str(raw_env["FLOWER_BASIC_AUTH"]))
        if not auth:
            problems.append(f"{name}: Flower without --basic-auth / FLOWER_BASIC_AUTH")
        for value in auth:
            # USER:PASSWORD where the password is the last, required interpolation.
            if not re.search(r":\$\{[A-Za-z_][A-Za-z0-9_]*:\?[^}]+\}$", value):
                problems.append(f"{name}: Flower password must be a required ${{VAR:?...}}")
        if "FLOWER_UNAUTHENTICATED_API" in _env(svc):
            problems.append(f"{name}: FLOWER_UNAUTHENTICATED_API opens the API")
        ports = svc.get("ports") or []
        for entry in ports:
            literal = str(entry.get("host_ip", "")) if isinstance(entry, dict) else str(entry)
            if not literal.startswith(LOOPBACK):
                problems.append(f"{name}: Flower port {entry!r} is not bound to 127.0.0.1")
        argv = _argv(svc.get("command"))
        if _option(argv, "--persistent") not in ("True", "true", "1"):
            problems.append(f"{name}: Flower without --persistent=True")
        db = _option(argv, "--db")
        if not db or not any(db.startswith(t.rstrip("/") + "/") for t in _volume_targets(svc)):
            problems.append(f"{name}: Flower --db is not on a volume")
    return problems


# --- facts from the real code ---------------------------------------------------------------------
def _import_check(ref: str) -> str | None:
    module, _, attr = ref.partition(":")
    try:
        obj = importlib.import_module(module)
        if attr:
            for part in attr.split("."):
                obj = getattr(obj, part)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _routes_of(ref: str) -> frozenset[str]:
    module, _, attr = ref.partition(":")
    app = getattr(importlib.import_module(module), attr or "app")
    if not hasattr(app, "routes") and callable(app):
        app = app()  # an app factory (uvicorn --factory)
    # Recent FastAPI keeps included routers as lazy wrappers in app.routes; the OpenAPI schema
    # lists every documented route however it was mounted.
    paths = {getattr(r, "path", None) for r in getattr(app, "routes", [])}
    if hasattr(app, "openapi"):
        paths |= set(app.openapi().get("paths", {}))
    return frozenset(p for p in paths if p)


def _argparse_check(parser: argparse.ArgumentParser) -> Callable[[list[str]], str | None]:
    def check(args: list[str]) -> str | None:
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                parser.parse_args(args)
        except SystemExit as exc:
            return err.getvalue().strip().splitlines()[-1] if exc.code else None
        return None

    return check


def real_facts() -> CodeFacts:
    from shared.broker import ALL_QUEUES
    from shared.cli import build_parser
    from shared.config import Settings

    return CodeFacts(
        queues=frozenset(ALL_QUEUES),
        settings_fields=frozenset(Settings.model_fields),
        check_kensaku=_argparse_check(build_parser()),
        check_import=_import_check,
        http_routes=_routes_of,
    )


def stand_in_facts() -> CodeFacts:
    """Real Settings, stand-ins for the CLI and the app modules (tests the file on its own)."""
    from shared.config import Settings

    parser = argparse.ArgumentParser(prog="kensaku")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("migrate")
    sub.add_parser("up").add_argument("--data-dir")
    model = sub.add_parser("model").add_subparsers(dest="model_cmd", required=True)
    model.add_parser("build")
    modules = {"worker.celery_app:app", "api.main:create_app"}
    return CodeFacts(
        queues=frozenset({"prep", "embed", "maintain"}),
        settings_fields=frozenset(Settings.model_fields),
        check_kensaku=_argparse_check(parser),
        check_import=lambda ref: None if ref in modules else "ModuleNotFoundError",
        http_routes=lambda ref: frozenset({"/healthz", "/readyz"}),
    )


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


# --- tests ----------------------------------------------------------------------------------------
BROKEN = """
services:
  postgres:
    image: postgres:16
    volumes: [pg:/var/lib/postgresql/data]
    environment:
      POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:-postgres}
  redis:
    image: redis:7
    command: redis-server --appendonly no
  api:
    build: .
    command: uvicorn api.mian:app --wrkers 4
    ports: ["8000:8000"]
    environment:
      KENSAKU_DATABASE_URL: postgresql://kensaku:hunter2@postgres/kensaku
      KENSAKU_NOT_A_SETTING: "1"
      KENSAKU_API_KEYS: ${KENSAKU_API_KEYS:-dev-key}
    healthcheck:
      test: ["CMD", "python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/health')"]
  migrate:
    build: .
    command: kensaku migrat
    restart: unless-stopped
  worker-prep:
    build: .
    command: celery -A worker.celery_app worker -Q prep,preprocess -P prefork
    depends_on: [redis]
  worker-gpu:
    build: .
    command: celery -A worker.celery_app worker -Q embed -P prefork
    environment:
      KENSAKU_DEVICE: cuda
    depends_on:
      migrate:
        condition: service_completed_successfully
  flower:
    build: .
    command: celery -A worker.celery_app flower --port=5555 --bogus-option=1
    ports: ["5555:5555"]
    healthcheck:
      test: ["CMD", "true"]
"""

EXPECTED_IN_BROKEN = [
    "secret ${POSTGRES_PASSWORD} must be required",
    "secret ${KENSAKU_API_KEYS} must be required",
    "URL with a literal password",
    "api: KENSAKU_NOT_A_SETTING is not a Settings field",
    "uvicorn: No such option",  # --wrkers
    "redis: redis without `--appendonly yes`",
    "redis: redis without `--maxmemory-policy noeviction`",
    "redis: redis /data (the AOF) is not on a volume",
    "postgres: image 'postgres:16' is not a pinned pgvector",
    "postgres: healthcheck does not use pg_isready",
    "postgres: /var/lib/postgresql is not on a volume",
    "postgres: neither a healthcheck nor a depends_on condition",
    "worker-prep: neither a healthcheck nor a depends_on condition",
    "worker-prep: command: unknown queue 'preprocess'",
    "worker-prep: does not wait for migrate",
    "migrate: command `kensaku migrat`",
    "worker-gpu: GPU service outside the gpu profile",
    "worker-gpu: GPU service without an NVIDIA device reservation",
    "worker-gpu: GPU worker must use the solo pool",
    "worker-gpu: waits for migrate to complete; it restarts",
    "flower: Flower without --basic-auth",
    "flower: Flower port '5555:5555' is not bound to 127.0.0.1",
    "flower: Flower without --persistent=True",
    "flower: Flower --db is not on a volume",
    "flower: command: unknown Flower option --bogus-option",
    "api: port 8000:8000 is published beyond 127.0.0.1",
    "no GPU embed worker",
    "no service runs `kensaku migrate`",
]


def test_checker_finds_every_problem_in_a_broken_file() -> None:
    problems = compose_problems(yaml.safe_load(BROKEN), stand_in_facts())
    text = "\n".join(problems)
    missing = [p for p in EXPECTED_IN_BROKEN if p not in text]
    assert not missing, f"rules that did not fire: {missing}\nproblems found:\n{text}"


def test_checker_catches_unknown_modules_and_routes() -> None:
    broken = yaml.safe_load(BROKEN)
    broken["services"]["api"]["command"] = "uvicorn --factory api.mian:create_app"
    text = "\n".join(compose_problems(broken, stand_in_facts()))
    assert "ASGI app api.mian:create_app: ModuleNotFoundError" in text
    broken["services"]["api"]["command"] = "uvicorn --factory api.main:create_app"
    text = "\n".join(compose_problems(broken, stand_in_facts()))
    assert "healthcheck requests /health, not a route" in text
    broken["services"]["worker-prep"]["command"] = "celery -A worker.app worker -Q prep"
    text = "\n".join(compose_problems(broken, stand_in_facts()))
    assert "celery app worker.app:app: ModuleNotFoundError" in text


def test_compose_file_passes_with_stand_in_code() -> None:
    """The file on its own: structure, secrets, settings, tool CLIs (not the lead's modules)."""
    assert compose_problems(load_compose(), stand_in_facts()) == []


def test_compose_file_matches_the_code() -> None:
    """The file against the real CLI parser, Celery app, ASGI app, queues and Settings."""
    problems = compose_problems(load_compose(), real_facts())
    assert problems == [], "\n".join(problems)


def test_compose_variables_are_documented_in_env_example() -> None:
    used = {var for text in _scalars(load_compose()) for var, _, _ in _interpolations(text)}
    example = (ROOT / ".env.example").read_text(encoding="utf-8")
    listed = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", example, flags=re.MULTILINE))
    assert sorted(used - listed) == []
    assert sorted(listed - used) == [], "documented but unused"
    # Secrets ship empty in the example; nothing else may be secret-looking with a value.
    for line in example.splitlines():
        name, sep, value = line.partition("=")
        if sep and SECRET_NAME.search(name):
            assert value == "", f"{name} must be empty in .env.example"


def _dockerfile_runs(path: Path) -> list[str]:
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    return [line.strip()[4:] for line in text.splitlines() if line.strip().startswith("RUN ")]


@pytest.mark.parametrize(
    ("dockerfile", "torch_index"),
    [
        ("Dockerfile", "https://download.pytorch.org/whl/cpu"),
        ("Dockerfile.gpu", "https://download.pytorch.org/whl/${TORCH_CUDA}"),
    ],
)
def test_dockerfile_installs_pinned_torch_first_and_bakes_the_model(
    dockerfile: str, torch_index: str
) -> None:
    runs = _dockerfile_runs(ROOT / dockerfile)
    torch_at = next(i for i, r in enumerate(runs) if "pip install" in r and "torch==" in r)
    assert torch_index in runs[torch_at]
    deps_at = next(i for i, r in enumerate(runs) if "pip install -r" in r)
    app_at = next(i for i, r in enumerate(runs) if re.search(r"pip install .*-e \.", r))
    model_at = next(i for i, r in enumerate(runs) if "kensaku model build" in r)
    assert torch_at < deps_at < app_at < model_at
    text = (ROOT / dockerfile).read_text(encoding="utf-8")
    assert "PIP_CONSTRAINT" in text  # later installs cannot swap the torch build
    assert re.search(r"^USER (?!root)", text, flags=re.MULTILINE), "runs as root"


def test_gpu_dockerfile_uses_a_cuda_runtime_base() -> None:
    text = (ROOT / "Dockerfile.gpu").read_text(encoding="utf-8")
    assert re.search(r"^FROM nvidia/cuda:\$\{CUDA_VERSION\}-runtime-", text, re.MULTILINE)
    assert re.search(r"^ARG CUDA_VERSION=12\.", text, re.MULTILINE)


def test_compose_builds_with_files_that_exist() -> None:
    for name, svc in load_compose()["services"].items():
        build = svc.get("build")
        if build:
            dockerfile = (
                build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else ("Dockerfile")
            )
            assert (ROOT / dockerfile).is_file(), f"{name}: {dockerfile} missing"


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    lines = set((ROOT / ".dockerignore").read_text(encoding="utf-8").split())
    for entry in (".env", ".venv", ".models", ".git"):
        assert entry in lines
    # What the image build needs must not be ignored.
    for needed in ("migrations", "shared", "api", "worker", "pyproject.toml", "README.md"):
        assert needed not in lines
