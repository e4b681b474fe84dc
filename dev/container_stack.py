"""The production image as containers on this machine: the code server, the daemon and
the webserver of deploy/dagster-docker.yaml, each run in a container of its own
(DockerRunLauncher), against this machine's PostgreSQL and a moto S3 server.

Every container uses the host's network, so all traffic stays on loopback; each is
labelled with the stack's id, and everything it started is removed on exit. Used by
tests/test_containers.py and benchmarks/container_benchmark.py (`make image` first).
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import local_services
from . import process_group as processes

REPO = Path(__file__).resolve().parents[1]
IMAGE = "voicesurvey-exports"
# Label on every container a stack starts (its own and the runs'): the stack's id.
STACK_LABEL = "voicesurvey-exports.stack"
CODE_LOCATION = "voicesurvey_exports"


def image_tag() -> str:
    """voicesurvey-exports:<version in pyproject.toml>, as `make image` tags it."""
    text = (REPO / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', text, re.M).group(1)
    return f"{IMAGE}:{version}"


def docker_missing() -> str | None:
    """What keeps this machine from running the stack, in one line; None if nothing."""
    try:
        import docker
    except ImportError:
        return "the docker Python package is missing (make install)"
    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        client = docker.from_env(timeout=10)
        client.ping()
    except Exception as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        return f"no Docker daemon answers on {where} (install docker.io, start dockerd): {reason}"
    try:
        client.images.get(image_tag())
    except docker.errors.ImageNotFound:
        return f"the image {image_tag()} is not built (make image)"
    finally:
        client.close()
    return None


def instance_config(s3_endpoint: str, stack_id: str, **overrides) -> dict:
    """deploy/dagster-docker.yaml for this machine: the runs on the host's network instead
    of the compose file's, labelled with the stack's id, and given the local S3 endpoint."""
    config = yaml.safe_load((REPO / "deploy/dagster-docker.yaml").read_text())
    launcher = config["run_launcher"]["config"]
    launcher.pop("networks")
    launcher["container_kwargs"].update(network_mode="host", labels={STACK_LABEL: stack_id})
    launcher["env_vars"].append("AWS_ENDPOINT_URL")
    for key, value in overrides.items():
        config[key] = value
    return config


@dataclass
class ContainerStack:
    home: Path  # the instance and workspace files, and each container's log
    env: dict[str, str]  # what every container gets
    stack_id: str
    client: object  # docker.DockerClient
    s3_port: int
    web_port: int
    code_port: int
    containers: list = field(default_factory=list)  # code server, daemon, webserver

    @property
    def graphql(self) -> str:
        return f"http://127.0.0.1:{self.web_port}/graphql"

    @property
    def s3_endpoint(self) -> str:
        return self.env["AWS_ENDPOINT_URL"]

    def s3_client(self):
        return local_services.s3_client(self.s3_endpoint)

    def labelled(self) -> list:
        """Every container of this stack, runs included, in any state."""
        return self.client.containers.list(
            all=True, filters={"label": f"{STACK_LABEL}={self.stack_id}"}
        )


@contextlib.contextmanager
def container_stack(
    home: Path, settings: Mapping[str, str], *, bucket: str, **instance_overrides
) -> Iterator[ContainerStack]:
    """Start moto (a host process), then the code server, the daemon and the webserver as
    containers of the image; yield once the webserver answers. On exit, save each
    container's log to `home`, remove them and any run container left, stop moto.

    `settings`: DATABASE_URL and DAGSTER_POSTGRES_URL (on 127.0.0.1) and app settings."""
    import docker

    stack_id = uuid.uuid4().hex[:12]
    s3_port = processes.free_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}",
        **local_services.LOCAL_CREDENTIALS,
        "AWS_REGION": local_services.LOCAL_REGION,
        "S3_BUCKET_NAME": bucket,
        "EXPORT_IO_STORAGE": "s3",
        **settings,
    }
    client = docker.from_env(timeout=120)
    stack = ContainerStack(
        home=home,
        env=env,
        stack_id=stack_id,
        client=client,
        s3_port=s3_port,
        web_port=processes.free_port(),
        code_port=processes.free_port(),
    )
    config = instance_config(env["AWS_ENDPOINT_URL"], stack_id, **instance_overrides)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    workspace = yaml.safe_load((REPO / "deploy/workspace.yaml").read_text())
    workspace["load_from"][0]["grpc_server"].update(host="127.0.0.1", port=stack.code_port)
    (home / "workspace.yaml").write_text(yaml.safe_dump(workspace))
    for name in ("dagster.yaml", "workspace.yaml"):
        (home / name).chmod(0o644)  # read by the image's user (uid 10001)

    moto = local_services.start_s3_server(s3_port, home / "moto.log", {**os.environ, **env})
    mounts = {
        str(home / "dagster.yaml"): {"bind": "/opt/dagster/dagster.yaml", "mode": "ro"},
        str(home / "workspace.yaml"): {"bind": "/opt/dagster/workspace.yaml", "mode": "ro"},
    }

    def run(name: str, command: list[str], extra_env=None, **kwargs):
        container = client.containers.run(
            image_tag(),
            command,
            name=f"vse-{stack_id}-{name}",
            detach=True,
            network_mode="host",
            environment={**env, **(extra_env or {})},
            labels={STACK_LABEL: stack_id},
            **kwargs,
        )
        stack.containers.append(container)
        return container

    try:
        local_services.create_bucket(stack.s3_endpoint, bucket)
        run(
            "code-server",
            [
                *("dagster", "code-server", "start", "-h", "127.0.0.1"),
                *("-p", str(stack.code_port), "-m", "voicesurvey_exports.pipeline.definitions"),
                *("--location-name", CODE_LOCATION),
            ],
            # The image DockerRunLauncher starts each run of this code location from.
            extra_env={"DAGSTER_CURRENT_IMAGE": image_tag()},
            volumes=mounts,
        )
        processes.wait_for(
            lambda: processes.port_open(stack.code_port), 180, "the code server container"
        )
        socket_group = os.stat("/var/run/docker.sock").st_gid
        run(
            "daemon",
            ["dagster-daemon", "run", "-w", "/opt/dagster/workspace.yaml"],
            volumes={
                **mounts,
                "/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"},
            },
            group_add=[socket_group],
        )
        run(
            "webserver",
            [
                *("dagster-webserver", "-w", "/opt/dagster/workspace.yaml"),
                *("-h", "127.0.0.1", "-p", str(stack.web_port)),
            ],
            volumes=mounts,
        )
        processes.wait_for(
            lambda: processes.port_open(stack.web_port), 180, "the webserver container"
        )
        yield stack
    finally:
        try:
            for container in stack.containers:
                with contextlib.suppress(Exception):
                    (home / f"{container.name}.log").write_bytes(container.logs())
                container.remove(force=True)
            # Run containers remove themselves when they exit (auto_remove); one still
            # running when the stack stops is stopped here.
            for container in stack.labelled():
                with contextlib.suppress(docker.errors.NotFound):
                    container.remove(force=True)
        finally:
            processes.stop_all([moto])
            client.close()
