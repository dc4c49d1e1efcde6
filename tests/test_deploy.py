"""The container files, checked without a Docker engine (none runs here)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _routes() -> set[str]:
    from service.app import create_app
    from service.settings import Settings

    return set(create_app(Settings()).openapi()["paths"])


def _path_of(url: str) -> str:
    return re.sub(r"^https?://[^/]+", "", url)


def test_compose_serves_on_one_gpu_with_volumes_and_a_real_health_check():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    svc = compose["services"]["avchat"]
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert any(str(p).endswith(":8000") for p in svc["ports"])
    mounts = {v.split(":")[1] for v in svc["volumes"]}
    assert {"/data/hf", "/data/checkpoints"} <= mounts
    assert "hf-cache" in compose["volumes"] and "batch-data" in compose["volumes"]
    assert "batch-data:" + svc["environment"]["AVCHAT_DATA_DIR"] in svc["volumes"]  # batches survive a restart
    for key in ("AVCHAT_MODEL", "AVCHAT_API_KEYS", "AVCHAT_ENGINE"):
        assert key in svc["environment"]
    assert svc["restart"] in ("unless-stopped", "always")
    test = svc["healthcheck"]["test"]
    url = next(part for part in test if part.startswith("http"))
    assert _path_of(url) in _routes()


@pytest.mark.parametrize(
    "stage, manifests", [("finetune", ["videoinstruct.jsonl"]), ("pretrain", ["commonvoice.jsonl", "audiocaps.jsonl"])]
)
def test_compose_train_runs_a_valid_distributed_command_on_the_same_volumes(tmp_path, stage, manifests):
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    train, serve = compose["services"]["train"], compose["services"]["avchat"]
    assert train["profiles"] == ["train"] and train["entrypoint"] == ["scripts/train.sh"]
    served = {v for v in serve["volumes"] if not v.startswith("batch-data:")}  # the Batch API's, serving only
    assert served <= set(train["volumes"])
    assert any(v.endswith(":/data/datasets:ro") for v in train["volumes"])  # the data may be read-only
    assert train["deploy"]["resources"]["reservations"]["devices"][0]["count"] == "all"
    # The command the entry point runs, with the roots the volumes provide, validated by the project itself.
    data, runs = tmp_path / "datasets", tmp_path / "checkpoints"
    for name in manifests:
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_text("{}\n")
    (runs / "stage1" / "final").mkdir(parents=True)
    env = {
        **os.environ,
        "AVCHAT_STAGE": stage,
        "AVCHAT_DATA_ROOT": str(data),
        "AVCHAT_CHECKPOINTS": str(runs),
        "AVCHAT_GPUS": "8",
    }
    out = subprocess.run(
        ["scripts/train.sh", "--print", "--max-steps", "5"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    command = out.stdout.split("\n")[:-1]
    assert command[:5] == ["torchrun", "--standalone", "--nproc-per-node", "8", "-m"]
    assert command[5] == f"training.{stage}" and command[-2:] == ["--max-steps", "5"]  # user arguments last
    from training.config import parse_config

    cfg = parse_config(command[6:], stage=stage)  # exits with the list of problems if the command is invalid
    assert cfg.max_steps == 5 and cfg.data_root == str(data)
    assert cfg.output_dir == str(runs / ("stage2" if stage == "finetune" else "stage1"))


def test_dockerfile_command_and_health_check_name_things_that_exist():
    text = (ROOT / "Dockerfile").read_text()
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", text, re.M).group(1))
    assert cmd[:3] == ["python", "-m", "service"] and importlib.util.find_spec("service.__main__") is not None
    health = json.loads(re.search(r"HEALTHCHECK[^\n]*\\\n\s*CMD (\[.*\])", text).group(1))
    url = next(part for part in health if part.startswith("http"))
    assert _path_of(url) == "/ready" and "/ready" in _routes()
    user = re.findall(r"^USER (\S+)", text, re.M)[-1]
    assert user.split(":")[0] not in ("root", "0"), "runs as a non-root user"
    assert "ffmpeg" in text
    for copied in re.findall(r"^COPY (\S+) ", text, re.M):
        assert (ROOT / copied).exists(), copied
    pins = _image_pins()
    assert re.fullmatch(r"0\.(1[1-9]|[2-9]\d)\.\d+", pins["vllm"]), "a vLLM release with V1 prompt embeddings"
    # The project's own bounds admit every pin the image installs beside it.
    from packaging.requirements import Requirement

    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"] + project["optional-dependencies"]["train"]:
        req = Requirement(spec)
        name = req.name.lower().replace("_", "-")
        if name in pins:
            assert req.specifier.contains(pins[name]), f"{spec} excludes the image's pin {pins[name]}"


def _image_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "docker" / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"{line!r} is not pinned with =="
            pins[name.lower().replace("_", "-")] = version
    return pins


# --- docker-compose.yml against the Compose Specification's own JSON schema (tests/schemas) ---

_GO_DURATION = re.compile(r"(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+")


def _interpolate(value, env: dict[str, str]):
    """What `docker compose config` does to ${VAR}, ${VAR:-default} and $$ before validating."""
    if isinstance(value, dict):
        return {k: _interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, default = m.group(1), m.group(2), m.group(3) or ""
        if op is None:
            return env.get(name, "")
        if op == ":?":  # required: docker compose refuses the file without it
            if not env.get(name):
                raise MissingVariable(f"{name}: {default}")
            return env[name]
        return env.get(name) or default if op == ":-" else env.get(name, default)

    rest = re.sub(r"\$\$|\$\{(\w+)(:-|:\?|-)?([^}]*)\}", one, value)
    assert "${" not in rest, f"unbalanced interpolation in {value!r}"
    return rest


def _compose_problems(compose: dict) -> list[str]:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((ROOT / "tests" / "schemas" / "compose-spec.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    problems = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    declared = set(compose.get("volumes") or {})
    for name, svc in compose.get("services", {}).items():
        for mount in svc.get("volumes", []):
            source = mount.split(":")[0]
            if not source.startswith((".", "/", "$")) and source not in declared:
                problems.append(f"{name}: volume {source!r} is not declared under volumes:")
        check = svc.get("healthcheck")
        if check:
            if not (isinstance(check["test"], list) and check["test"][0] in ("CMD", "CMD-SHELL")):
                problems.append(f"{name}: healthcheck test must be a CMD list")
            for key in ("interval", "timeout", "start_period", "start_interval"):
                if key in check and not _GO_DURATION.fullmatch(str(check[key])):
                    problems.append(f"{name}: healthcheck {key}={check[key]!r} is not a duration")
        for dev in svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", []):
            count, ids = dev.get("count"), dev.get("device_ids")
            counted = count == "all" or (isinstance(count, int) and count > 0)
            if not ("gpu" in dev.get("capabilities", []) and (counted or (ids and count is None))):
                problems.append(
                    f"{name}: GPU reservation needs capabilities [gpu] and a count (n > 0 or 'all') or device_ids"
                )
    return problems


class MissingVariable(ValueError):
    pass


def _compose(env: dict[str, str] | None = None, name: str = "docker-compose.yml") -> dict:
    raw = yaml.safe_load((ROOT / name).read_text())
    return _interpolate(raw, env or {})


def test_compose_file_is_valid_against_the_compose_specification():
    assert _compose_problems(_compose()) == []
    custom = _compose({"AVCHAT_PORT": "9000", "AVCHAT_DATA": "/srv/data", "AVCHAT_MODEL": "/data/checkpoints/x"})
    assert _compose_problems(custom) == []
    assert custom["services"]["avchat"]["ports"] == ["9000:8000"]
    assert "/srv/data:/data/datasets:ro" in custom["services"]["train"]["volumes"]
    serve, train = custom["services"]["avchat"], custom["services"]["train"]
    assert "profiles" not in serve, "`docker compose up` starts the service"
    assert train["profiles"] == ["train"], "training starts only with --profile train"
    # The image's own health check and the file's agree on how long a cold start may take.
    docker_start = re.search(r"--start-period=(\S+)", (ROOT / "Dockerfile").read_text()).group(1)
    assert serve["healthcheck"]["start_period"] == docker_start


@pytest.mark.parametrize(
    "break_it, complaint",
    [
        (
            lambda c: c["services"]["avchat"]["deploy"]["resources"]["reservations"]["devices"][0].update(
                capabilities="gpu"
            ),
            "array",
        ),
        (lambda c: c["services"]["avchat"]["deploy"]["resources"]["reservations"]["devices"][0].update(count=0), "GPU"),
        (lambda c: c["services"]["avchat"]["healthcheck"].update(start_period="15 minutes"), "duration"),
        (lambda c: c["services"]["avchat"]["healthcheck"].update(test="curl -f http://x/ready"), "CMD list"),
        (lambda c: c["services"]["train"].update(profiles="train"), "array"),
        (lambda c: c["services"]["train"]["volumes"].append("datasets:/d"), "not declared"),
        (lambda c: c["services"]["avchat"].update(volume=["hf-cache:/data/hf"]), "unexpected"),
    ],
    ids=[
        "capabilities-not-a-list",
        "zero-gpus",
        "bad-duration",
        "shell-string-test",
        "profile-not-a-list",
        "undeclared-volume",
        "misspelt-key",
    ],
)
def test_the_compose_check_catches_what_docker_compose_would_refuse(break_it, complaint):
    compose = _compose()
    break_it(compose)
    problems = _compose_problems(compose)
    assert problems and any(complaint in p for p in problems), problems


def test_the_fleet_compose_file_is_valid_and_needs_a_shared_secret():
    fleet = _compose({"AVCHAT_SECRET": "s3cret"}, "docker-compose.fleet.yml")
    assert _compose_problems(fleet) == []
    services = fleet["services"]
    replicas = sorted(n for n in services if n.startswith("api-"))
    assert len(replicas) >= 2 and {"redis", "router"} <= set(services)
    gpus = [services[n]["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] for n in replicas]
    assert sorted(map(tuple, gpus)) == [(str(i),) for i in range(len(replicas))]  # one GPU each, all different
    for n in replicas:
        env = services[n]["environment"]
        assert env["AVCHAT_SECRET"] == "s3cret" and env["AVCHAT_FEATURE_STORE"] == "redis://redis:6379/0"
        assert env["AVCHAT_HOST"] == "0.0.0.0" and _path_of(services[n]["healthcheck"]["test"][-1]) in _routes()
    assert services["router"]["volumes"] == ["./deploy/haproxy:/usr/local/etc/haproxy:ro"]
    config = (ROOT / "deploy" / "haproxy" / "haproxy.cfg").read_text()
    for i in range(len(replicas)):
        assert f'"${{AVCHAT_REPLICA_{i}}}"' in config and services["router"]["environment"][f"AVCHAT_REPLICA_{i}"]
    assert "allkeys-lru" in services["redis"]["command"]
    with pytest.raises(MissingVariable, match="AVCHAT_SECRET"):  # replicas with different secrets disagree on ids
        _compose({}, "docker-compose.fleet.yml")


def test_the_router_configuration_is_one_haproxy_accepts(tmp_path):
    import shutil

    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not os.path.exists(haproxy):
        pytest.skip("needs Debian's haproxy (scripts/system-deps.sh installs it)")
    folder = ROOT / "deploy" / "haproxy"
    env = {"AVCHAT_ROUTER_PORT": "8000", "AVCHAT_HAPROXY_DIR": str(folder)}
    env |= {f"AVCHAT_REPLICA_{i}": f"127.0.0.1:{9000 + i}" for i in range(2)}
    out = subprocess.run([haproxy, "-c", "-f", str(folder / "haproxy.cfg")], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    for code in (502, 503, 504):  # every error the router itself gives is an OpenAI error body
        head, _, body = (folder / "errors" / f"{code}.http").read_bytes().decode().partition("\r\n\r\n")
        assert head.startswith(f"HTTP/1.1 {code}") and f"Content-Length: {len(body.encode())}" in head
        assert set(json.loads(body)["error"]) == {"message", "type", "param", "code"}


@pytest.mark.network
@pytest.mark.timeout(1200)  # each download has 900 s
def test_every_package_pin_in_the_image_exists_in_the_package_index(tmp_path):
    import sys

    def download(*args):
        return subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(tmp_path), *args],
            capture_output=True,
            text=True,
            timeout=900,
        )

    import pip

    if download(f"pip=={pip.__version__}").returncode != 0:
        pytest.skip("the package index is unreachable (run with -m 'not network' offline)")
    out = download("-r", str(ROOT / "docker" / "requirements.txt"))
    assert out.returncode == 0, out.stderr[-2000:]
    got = {p.name.lower().replace("_", "-") for p in tmp_path.iterdir()}
    for name, version in _image_pins().items():
        assert any(g.startswith(f"{name}-{version}") for g in got), (name, version, sorted(got))
