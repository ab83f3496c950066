"""The deployment files that cannot run on the test machine (compose stacks, the
Kubernetes manifest) hold together: the files they mount exist, the configurations they
carry are ones the server accepts, and the balancing settings are the documented ones.
(The image and nginx themselves run for real in test_docker.py and
test_nginx_balancer.py.)"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from picolm_server.config.settings import load_settings

REPO = Path(__file__).resolve().parents[2]


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


@pytest.fixture(autouse=True)
def no_picolm_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("PICOLM_"):
            monkeypatch.delenv(key)


def bind_sources(service: dict[str, Any], base: Path) -> list[Path]:
    """Host paths of the service's bind mounts that name files in the repository."""
    sources = []
    for volume in service.get("volumes", []):
        source = volume.split(":")[0]
        if source.startswith(".") and "${" not in source:
            sources.append((base / source).resolve())
    return sources


@pytest.mark.parametrize("name", ["embedded.yaml", "picolm.yaml"])
def test_container_configurations_are_valid(name: str) -> None:
    settings = load_settings(REPO / "deploy" / "docker" / name)
    assert settings.server.port == 8080 and settings.server.host == "0.0.0.0"
    if name == "picolm.yaml":
        # The original server's layout: its binary, its model, a time limit, logging.
        data = load(REPO / "deploy" / "docker" / name)
        assert set(data) >= {"picolm", "logging"}
        assert {"binary", "model_path", "timeout_seconds"} <= set(data["picolm"])
        assert settings.engine == "picolm"
        assert settings.picolm.binary == "/usr/local/bin/picolm"
        assert settings.picolm.model_path == "/models/model.gguf"
        assert settings.picolm.cache_dir == "/var/cache/picolm-server"
    else:
        assert settings.engine == "llama_cpp" and settings.llama_cpp.model_path == ""


def test_compose_builds_with_a_model_url_and_mounts_models_on_request() -> None:
    services = load(REPO / "compose.yaml")["services"]
    default, models = services["picolm-server"], services["models"]
    assert "profiles" not in default and models["profiles"] == ["models"]
    assert default["build"]["context"] == "."
    assert set(default["build"]["args"]) == {"MODEL_URL", "MODEL_NAME", "MODEL_SHA256"}
    for service in (default, models):
        assert service["image"] == "picolm-server:latest"
        # The image chooses its configuration at start (deploy/docker/entrypoint.sh).
        assert "PICOLM_CONFIG" not in service.get("environment", {})
    # Mounting /models would hide a model built into the image: only on request.
    assert not any(":/models" in v for v in default["volumes"])
    assert any(v.endswith(":/models:ro") for v in models["volumes"])


def test_compose_replicas_put_nginx_in_front_of_the_servers() -> None:
    path = REPO / "deploy" / "compose.replicas.yaml"
    services = load(path)["services"]
    servers, nginx = services["picolm-server"], services["nginx"]
    assert "PICOLM_REPLICAS" in str(servers["deploy"]["replicas"])
    assert (path.parent / servers["build"]).resolve() == REPO
    assert nginx["depends_on"]["picolm-server"]["condition"] == "service_healthy"
    for service in (servers, nginx):
        sources = bind_sources(service, path.parent)
        assert sources
        for source in sources:
            assert source.is_file(), source
    # nginx.conf's upstream names the service.
    assert "server picolm-server:8080" in (REPO / "deploy" / "nginx" / "nginx.conf").read_text()


def test_kubernetes_example() -> None:
    documents = list(
        yaml.safe_load_all((REPO / "deploy/kubernetes/picolm-server.yaml").read_text())
    )
    by_kind = {doc["kind"]: doc for doc in documents}
    assert set(by_kind) == {"ConfigMap", "Deployment", "Service", "Ingress"}

    config = by_kind["ConfigMap"]["data"]["config.yaml"]
    parsed = yaml.safe_load(config)
    assert parsed["server"]["port"] == 8080

    pod = by_kind["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert by_kind["Service"]["spec"]["selector"] == {"app": "picolm-server"}

    annotations = by_kind["Ingress"]["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    assert annotations[prefix + "upstream-hash-by"] == "$http_x_session_id"
    assert "http_429" in annotations[prefix + "proxy-next-upstream"]
    assert "non_idempotent" in annotations[prefix + "proxy-next-upstream"]
    assert annotations[prefix + "proxy-buffering"] == "off"


def test_kubernetes_configuration_is_one_the_server_accepts(tmp_path: Path) -> None:
    documents = yaml.safe_load_all((REPO / "deploy/kubernetes/picolm-server.yaml").read_text())
    config_map = next(doc for doc in documents if doc["kind"] == "ConfigMap")
    path = tmp_path / "config.yaml"
    path.write_text(config_map["data"]["config.yaml"])
    assert load_settings(path).engine == "llama_cpp"
