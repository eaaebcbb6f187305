"""The compose deployment, checked without a Docker engine (none runs on these machines):
``deploy/docker-compose.yml`` validates against the Compose specification's JSON schema
(vendored: ``deploy/compose-spec.json``) and has the structure the deployment relies on;
``deploy/.env.example`` names every variable it reads. The Dockerfile: test_dockerfile.py.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from app.settings import Settings
from cascade.fetch import ARTIFACTS
from cascade.llm_server import LOCAL_LLM_MODEL

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
ENV_EXAMPLE = DEPLOY / ".env.example"
SCHEMA = DEPLOY / "compose-spec.json"
APP_SERVICES = ("models", "llm", "gateway", "learner")  # the services built from ../Dockerfile


# ---------------------------------------------------------------- compose: interpolation


_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, $$."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group("escaped"):
            return "$"
        name = m.group("name") or m.group("bare")
        op, arg = m.group("op"), m.group("arg") or ""
        got = env.get(name)
        if op == ":-":
            return got if got else arg
        if op == "-":
            return got if got is not None else arg
        if op in (":?", "?") and not got:
            raise AssertionError(f"${{{name}}} is required: {arg}")
        return got or ""

    return _VAR.sub(sub, value)


def variables(text: str) -> set[str]:
    return {m.group("name") or m.group("bare") for m in _VAR.finditer(text) if not m["escaped"]}


def read_env_example() -> dict[str, tuple[str, list[str]]]:
    """NAME -> (value, the comment lines right above it)."""
    out: dict[str, tuple[str, list[str]]] = {}
    comments: list[str] = []
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.startswith("#"):
            comments.append(line.lstrip("# ").strip())
        elif "=" in line:
            name, _, value = line.partition("=")
            assert name not in out, f"{name} twice in {ENV_EXAMPLE}"
            out[name.strip()] = (value.strip(), comments)
            comments = []
        else:
            comments = []  # a blank line ends a comment block
    return out


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def env_example() -> dict[str, tuple[str, list[str]]]:
    return read_env_example()


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any], env_example: dict[str, tuple[str, list[str]]]) -> dict[str, Any]:
    """The compose model as Docker would see it with deploy/.env copied from the example."""
    return interpolate(raw, {k: v for k, (v, _) in env_example.items()})


@pytest.fixture(scope="module")
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def schema_errors(validator: jsonschema.protocols.Validator, doc: dict[str, Any]) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
        for e in validator.iter_errors(doc)
    ]


# ---------------------------------------------------------------- compose: the schema


def test_vendored_schema_is_the_recorded_one() -> None:
    recorded = re.search(
        r"sha256 of the file: `([0-9a-f]{64})`", (DEPLOY / "README.md").read_text()
    )
    assert recorded, "deploy/README.md records the schema's sha256"
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == recorded.group(1)
    schema = json.loads(SCHEMA.read_text())
    assert schema["title"] == "Compose Specification"
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_compose_file_validates_against_the_compose_spec(
    raw: dict[str, Any], compose: dict[str, Any], validator: jsonschema.protocols.Validator
) -> None:
    # with deploy/.env copied from the example, and with no .env at all (the defaults)
    assert schema_errors(validator, compose) == []
    assert schema_errors(validator, interpolate(raw, {})) == []


def test_the_schema_check_catches_mistakes(
    compose: dict[str, Any], validator: jsonschema.protocols.Validator
) -> None:
    """The validation is not vacuous: typical slips are rejected."""
    broken = json.loads(json.dumps(compose))
    broken["services"]["gateway"]["depends_on"]["redis"]["condition"] = "service_ready"
    broken["services"]["learner"]["restart_policy"] = "always"  # a deploy key, misplaced
    broken["services"]["redis"]["healthcheck"]["command"] = "redis-cli ping"  # not `test`
    broken["volumes"]["models"] = "not-a-mapping"
    errors = schema_errors(validator, broken)
    joined = "\n".join(errors)
    for where in ("services/gateway", "services/learner", "services/redis", "volumes/models"):
        assert where in joined, joined


def test_env_example_documents_every_variable(
    raw: dict[str, Any], env_example: dict[str, tuple[str, list[str]]]
) -> None:
    used = variables(json.dumps(raw))
    documented = set(env_example)
    assert used - documented == set(), "read by the compose file, missing in .env.example"
    # COMPOSE_PROFILES is read by the docker compose command itself
    assert documented - used == {"COMPOSE_PROFILES"}, "in .env.example, unused by compose"
    for name, (_, comments) in env_example.items():
        assert comments, f"{name} has no comment in {ENV_EXAMPLE}"
    # the example's values are the compose file's own defaults: copying it changes nothing
    defaults = re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):-([^}]*)\}", json.dumps(raw))
    assert {name for name, _ in defaults} == used  # every variable has a default
    for name, default in defaults:
        assert env_example[name][0] == default, f"{name}: .env.example != compose default"


def test_app_environment_names_real_settings(compose: dict[str, Any]) -> None:
    """Every variable handed to the gateway and learner is read by the app or its config."""
    settings = {f.alias for f in Settings.model_fields.values() if f.alias}
    config_vars = variables((DEPLOY / "config.yaml").read_text())
    for name in ("gateway", "learner"):
        env = compose["services"][name]["environment"]
        unknown = set(env) - settings - config_vars
        assert unknown == set(), f"{name}: {unknown} is read by nothing"
        assert env["REDIS_URL"] == "redis://redis:6379/0"
        assert env["LLM_BASE_URL"] == "http://llm:8081/v1"


# ---------------------------------------------------------------- compose: the structure


def test_services_and_start_order(compose: dict[str, Any]) -> None:
    s = compose["services"]
    assert set(s) == {"redis", "models", "llm", "gateway", "learner", "vllm"}

    def deps(name: str) -> dict[str, str]:
        return {k: v["condition"] for k, v in s[name].get("depends_on", {}).items()}

    done, healthy = "service_completed_successfully", "service_healthy"
    assert deps("llm") == {"models": done}
    assert deps("gateway") == {"redis": healthy, "models": done, "llm": healthy}
    assert deps("learner") == {"redis": healthy, "models": done}
    for name, cond in [("redis", healthy), ("llm", healthy), ("models", done)]:
        if cond == healthy:  # a service_healthy dependency needs a health check to wait for
            assert not s[name]["healthcheck"].get("disable"), name


def test_redis_is_persistent_and_checked(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    assert redis["image"].startswith("redis:7")
    cmd = redis["command"]
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in redis["volumes"])
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_app_services_share_one_image_and_the_models_volume(compose: dict[str, Any]) -> None:
    s = compose["services"]
    for name in APP_SERVICES:
        assert s[name]["build"]["context"] == ".."
        assert (
            COMPOSE.parent / s[name]["build"]["context"] / s[name]["build"]["dockerfile"]
        ).is_file()
        assert s[name]["image"] == s["gateway"]["image"]
        mounts = [v for v in s[name]["volumes"] if v.split(":")[0] == "models"]
        # only the one-shot fetch writes the models; everyone else mounts them read-only
        assert mounts == (["models:/models"] if name == "models" else ["models:/models:ro"])


def test_models_is_a_one_shot_fetch(compose: dict[str, Any]) -> None:
    models = compose["services"]["models"]
    assert models["command"] == ["models", "fetch"]
    assert models["restart"] == "no"
    assert models["healthcheck"] == {"disable": True}


def test_llm_serves_the_fetched_large_model(compose: dict[str, Any]) -> None:
    llm = compose["services"]["llm"]
    assert llm["entrypoint"] == ["python", "-m", "llama_cpp.server"]
    args = llm["command"]
    opt = {args[i]: args[i + 1] for i in range(0, len(args), 2)}
    # the file `models fetch` assembles, under the models volume
    assert opt["--model"] == f"/models/{LOCAL_LLM_MODEL}"
    assert LOCAL_LLM_MODEL in {a.target for a in ARTIFACTS if a.group == "models"}
    assert opt["--model_alias"] == compose["services"]["gateway"]["environment"]["LLM_MODEL"]
    assert (opt["--host"], opt["--port"]) == ("0.0.0.0", "8081")
    assert "http://127.0.0.1:8081/v1/models" in " ".join(llm["healthcheck"]["test"])


def test_gateway_scales_without_port_conflicts(compose: dict[str, Any]) -> None:
    gw = compose["services"]["gateway"]
    assert gw["command"] == [
        "serve", "--host", "0.0.0.0", "--port", "8000", "--no-llm-server", "--no-learner",
    ]  # fmt: skip
    assert gw["expose"] == ["8000"]
    assert "container_name" not in gw  # a fixed name would forbid a second replica
    for port in gw.get("ports", []):
        # host part: absent (an ephemeral port) or a range with room for the replicas
        spec = str(port)
        host, _, container = spec.rpartition(":")
        assert container == "8000"
        host_port = host.rpartition(":")[2] if host else ""
        assert host_port == "" or re.fullmatch(r"\d+-\d+", host_port), f"fixed port {spec}"
        if host_port:
            first, last = map(int, host_port.split("-"))
            assert last - first + 1 >= int(gw["deploy"]["replicas"]) > 1
    assert "/readyz" in " ".join(gw["healthcheck"]["test"])
    # each replica gets its own /data (its demonstration outbox is per process)
    assert "/data" in gw["volumes"]


def test_learners_scale_without_sharing_a_name(compose: dict[str, Any]) -> None:
    learner = compose["services"]["learner"]
    # no --name: each replica's consumer name is its own (hostname and pid), as its lease is
    assert learner["command"] == ["learn"]
    assert learner["deploy"]["replicas"] == "1"  # LEARNER_REPLICAS
    assert "ports" not in learner
    assert learner["healthcheck"] == {"disable": True}  # no HTTP server to check


def test_gpu_profile_offers_vllm(compose: dict[str, Any]) -> None:
    s = compose["services"]
    vllm = s["vllm"]
    assert vllm["profiles"] == ["gpu"]
    assert all("profiles" not in s[n] for n in s if n != "vllm")  # the rest is always on
    image, _, tag = vllm["image"].rpartition(":")
    assert image == "vllm/vllm-openai" and tag not in ("", "latest")
    args = vllm["command"]
    assert args[args.index("--model") + 1] == "Qwen/Qwen2.5-1.5B-Instruct"
    # served under the gateways' model name: switching is LLM_BASE_URL alone
    assert args[args.index("--served-model-name") + 1] == s["gateway"]["environment"]["LLM_MODEL"]
    devices = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "http://vllm:8000/v1" in COMPOSE.read_text()  # the documented switch
