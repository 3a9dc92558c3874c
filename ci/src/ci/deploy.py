"""Deploy to a local kind cluster with the Helm chart (the `deploy` command and `task up`).

kind runs on the host's Docker: the toolbox container drives it through the host's Docker socket,
and reaches the cluster's API server through a Dagger host tunnel (the server listens on the host's
loopback, which a container cannot see).
"""

from __future__ import annotations

import time
from typing import Annotated, Final

from dagger import Container, Directory, Doc, PortForward, Service, dag

KIND_VERSION: Final = "v0.29.0"
HELM_VERSION: Final = "v3.18.4"
KUBECTL_VERSION: Final = "v1.33.3"
TOOLBOX_IMAGE: Final = "alpine:3.22"
API_SERVER_PORT: Final = 6443
API_ALIAS: Final = "kind-api"
CHART: Final = "helm/telemetry"

# The kind cluster: API server on a fixed host port so the tunnel knows where to go.
KIND_CONFIG: Final = f"""\
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
networking:
  apiServerAddress: "127.0.0.1"
  apiServerPort: {API_SERVER_PORT}
nodes:
  - role: control-plane
"""


def toolbox(
    docker_socket: Annotated[str, Doc("Path of the host's Docker socket that kind drives.")],
) -> Container:
    """Alpine with the docker CLI, kind, helm and kubectl (pinned), talking to the host's Docker."""
    arch = "amd64"
    kind = dag.http(
        f"https://kind.sigs.k8s.io/dl/{KIND_VERSION}/kind-linux-{arch}", permissions=0o755
    )
    kubectl = dag.http(
        f"https://dl.k8s.io/release/{KUBECTL_VERSION}/bin/linux/{arch}/kubectl", permissions=0o755
    )
    helm_tgz = dag.http(f"https://get.helm.sh/helm-{HELM_VERSION}-linux-{arch}.tar.gz")
    return (
        dag.container()
        .from_(TOOLBOX_IMAGE)
        .with_exec(["apk", "add", "--no-cache", "docker-cli", "ca-certificates"])
        .with_file("/usr/local/bin/kind", kind)
        .with_file("/usr/local/bin/kubectl", kubectl)
        .with_mounted_file("/tmp/helm.tar.gz", helm_tgz)
        .with_exec(
            [
                "tar",
                "-xzf",
                "/tmp/helm.tar.gz",
                "-C",
                "/usr/local/bin",
                "--strip-components=1",
                f"linux-{arch}/helm",
            ]
        )
        .with_unix_socket("/var/run/docker.sock", dag.host().unix_socket(docker_socket))
        .with_new_file("/etc/kind/cluster.yaml", KIND_CONFIG)
    )


def kind_api() -> Service:
    """A tunnel to the kind API server on the host's loopback (``https://kind-api:6443``)."""
    return dag.host().service(
        [PortForward(backend=API_SERVER_PORT, frontend=API_SERVER_PORT)], host="localhost"
    )


def deploy(
    src: Annotated[Directory, Doc("The repository (from ci.pipeline.source()); holds the chart.")],
    image_names: Annotated[
        list[str], Doc("Image references already in the host's Docker store, loaded into kind.")
    ],
    tag: Annotated[str, Doc("Image tag the chart deploys (image.tag).")],
    cluster: Annotated[str, Doc("kind cluster name; created when missing.")] = "telemetry",
    namespace: Annotated[
        str, Doc("Namespace of the release (created when missing).")
    ] = "telemetry",
    release: Annotated[str, Doc("Helm release name.")] = "telemetry",
    values: Annotated[
        str, Doc("Values file inside the repository for the release.")
    ] = "helm/telemetry/ci/kind-values.yaml",
    docker_socket: Annotated[
        str, Doc("Path of the host's Docker socket.")
    ] = "/var/run/docker.sock",
    timeout: Annotated[str, Doc("How long helm waits for the rollout and the tests.")] = "10m",
) -> Container:
    """Create the kind cluster if needed, load the images, `helm upgrade --install`, `helm test`."""
    kubeconfig = "/root/.kube/config"
    ensure_cluster = (
        f"kind get clusters | grep -qx '{cluster}' || "
        f"kind create cluster --name '{cluster}' --config /etc/kind/cluster.yaml --wait 180s"
    )
    ctr = (
        toolbox(docker_socket)
        # kind and helm act on outside state: never serve these steps from Dagger's cache.
        .with_env_variable("CACHE_BUSTER", str(time.time_ns()))
        .with_exec(["sh", "-c", ensure_cluster])
    )
    for name in image_names:
        ctr = ctr.with_exec(["kind", "load", "docker-image", name, "--name", cluster])
    return (
        ctr.with_exec(
            [
                "sh",
                "-c",
                f"mkdir -p /root/.kube && kind get kubeconfig --name '{cluster}' > {kubeconfig}",
            ]
        )
        .with_service_binding(API_ALIAS, kind_api())
        .with_env_variable("KUBECONFIG", kubeconfig)
        # The API server certificate names localhost, not the tunnel's alias.
        .with_exec(
            [
                "kubectl",
                "config",
                "set-cluster",
                f"kind-{cluster}",
                f"--server=https://{API_ALIAS}:{API_SERVER_PORT}",
                "--tls-server-name=localhost",
            ]
        )
        .with_directory("/src", src.filter(include=[f"{CHART}/**", values]))
        .with_workdir("/src")
        .with_exec(
            [
                "helm",
                "upgrade",
                "--install",
                release,
                CHART,
                "--namespace",
                namespace,
                "--create-namespace",
                "-f",
                values,
                "--set",
                f"image.tag={tag}",
                "--wait",
                "--timeout",
                timeout,
            ]
        )
        .with_exec(
            ["helm", "test", release, "--namespace", namespace, "--timeout", timeout, "--logs"]
        )
        .with_exec(["kubectl", "-n", namespace, "get", "pods,svc,pvc", "-o", "wide"])
    )
