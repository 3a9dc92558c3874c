"""``ci <command>`` (or ``python -m ci <command>``): run the pipeline inside a Dagger session.

    dagger run ci lint|tests|build|deploy|all [options]      (the workspace venv active)
    dagger run uv run ci tests                              (from the repository root)

``tests`` and ``test`` are the same command.

Only this module awaits: it turns the lazy objects of ``ci.pipeline``/``ci.deploy`` into leaf
steps (``sync``, ``export_image``, ``publish``, ``stdout``) and runs independent leaves together
in an anyio task group.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Annotated

import anyio
import dagger
from dagger import Container, Doc

from . import deploy as kind
from . import pipeline

COMMANDS = ("lint", "tests", "test", "build", "deploy", "all")


@dataclass(frozen=True, slots=True)
class Options:
    """The command line, parsed."""

    command: Annotated[str, Doc("One of lint, tests (or test), build, deploy, all.")]
    root: Annotated[str, Doc("Repository root on the host.")]
    tag: Annotated[str, Doc("Tag of the built images.")]
    registry: Annotated[str, Doc("Push the images to <registry>/telemetry-<svc>:<tag> if set.")]
    cluster: Annotated[str, Doc("kind cluster name for deploy.")]
    namespace: Annotated[str, Doc("Kubernetes namespace for deploy.")]
    release: Annotated[str, Doc("Helm release name for deploy.")]
    values: Annotated[str, Doc("Helm values file (repository path) for deploy.")]
    docker_socket: Annotated[str, Doc("Host Docker socket kind runs on.")]
    no_deploy: Annotated[bool, Doc("With `all`: stop after lint, test and build.")]
    pytest_args: Annotated[tuple[str, ...], Doc("Extra pytest arguments for `test`.")]


def parse_args(argv: Sequence[str] | None = None) -> Options:
    """Parse ``argv`` (default ``sys.argv[1:]``)."""
    parser = argparse.ArgumentParser(prog="ci", description=__doc__.splitlines()[0])
    parser.add_argument(
        "command", choices=COMMANDS, help="pipeline step to run (tests and test are the same)"
    )
    parser.add_argument("--root", default=".", help="repository root on the host (default: .)")
    parser.add_argument("--tag", default="ci", help="image tag to build and deploy (default: ci)")
    parser.add_argument(
        "--registry", default="", help="push images to REGISTRY/telemetry-<svc>:TAG after build"
    )
    parser.add_argument("--cluster", default="telemetry", help="kind cluster name (deploy)")
    parser.add_argument("--namespace", default="telemetry", help="namespace (deploy)")
    parser.add_argument("--release", default="telemetry", help="Helm release name (deploy)")
    parser.add_argument(
        "--values",
        default="helm/telemetry/ci/kind-values.yaml",
        help="Helm values file in the repository (deploy)",
    )
    parser.add_argument(
        "--docker-socket", default="/var/run/docker.sock", help="host Docker socket (deploy)"
    )
    parser.add_argument(
        "--no-deploy", action="store_true", help="with `all`: stop after lint, test and build"
    )
    parser.add_argument(
        "pytest_args", nargs=argparse.REMAINDER, help="after `--`: extra pytest arguments (tests)"
    )
    ns = parser.parse_args(argv)
    extra = [a for a in ns.pytest_args if a != "--"]
    return Options(
        command="test" if ns.command == "tests" else ns.command,
        root=ns.root,
        tag=ns.tag,
        registry=ns.registry.rstrip("/"),
        cluster=ns.cluster,
        namespace=ns.namespace,
        release=ns.release,
        values=ns.values,
        docker_socket=ns.docker_socket,
        no_deploy=ns.no_deploy,
        pytest_args=tuple(extra),
    )


def image_name(
    service: Annotated[str, Doc("Service name, e.g. api.")],
    tag: Annotated[str, Doc("Image tag.")],
    registry: Annotated[str, Doc("Registry prefix; empty for a local name.")] = "",
) -> str:
    """The image reference the chart expects: ``[<registry>/]telemetry-<service>:<tag>``."""
    name = f"telemetry-{service}:{tag}"
    return f"{registry}/{name}" if registry else name


async def sync(
    step: Annotated[str, Doc("Name printed with the result.")],
    ctr: Annotated[Container, Doc("The lazy container to evaluate.")],
) -> None:
    """Leaf: evaluate ``ctr`` (run its execs) and report."""
    await ctr.sync()
    print(f"ok  {step}", file=sys.stderr)


async def build(
    opts: Annotated[Options, Doc("Parsed command line.")],
    export: Annotated[bool, Doc("Also load the images into the host's Docker store (for kind).")],
) -> list[str]:
    """Leaf: build the four images concurrently; push or export them; return their names."""
    images = pipeline.images(pipeline.source(opts.root))
    names: dict[str, str] = {}

    async def one(service: str, ctr: Container) -> None:
        await ctr.sync()
        if opts.registry:
            names[service] = await ctr.publish(image_name(service, opts.tag, opts.registry))
        elif export:
            names[service] = image_name(service, opts.tag)
            await ctr.export_image(names[service])
        else:
            names[service] = image_name(service, opts.tag)
        print(f"ok  image {names[service]}", file=sys.stderr)

    async with anyio.create_task_group() as tg:
        for service, ctr in images.items():
            tg.start_soon(one, service, ctr)
    return [names[s] for s in pipeline.SERVICES]


async def deploy(opts: Annotated[Options, Doc("Parsed command line.")]) -> None:
    """Leaf: build and export the images, then install the chart on kind and run `helm test`."""
    names = await build(opts, export=not opts.registry)
    out = await kind.deploy(
        pipeline.source(opts.root),
        names if not opts.registry else [],
        opts.tag,
        cluster=opts.cluster,
        namespace=opts.namespace,
        release=opts.release,
        values=opts.values,
        docker_socket=opts.docker_socket,
    ).stdout()
    print(out)


async def run(opts: Annotated[Options, Doc("Parsed command line.")]) -> None:
    """Run one command; ``all`` runs lint, test and build together, then deploy."""
    src = pipeline.source(opts.root)
    py = pipeline.base(src)  # built once, shared by lint and test

    def test() -> Container:
        return pipeline.test(py, pipeline.postgres(), pytest_args=opts.pytest_args)

    steps: dict[str, Callable[[], Awaitable[object]]] = {
        "lint": lambda: sync("lint", pipeline.lint(py)),
        "test": lambda: sync("test", test()),
        "build": lambda: build(opts, export=False),
        "deploy": lambda: deploy(opts),
    }
    if opts.command != "all":
        await steps[opts.command]()
        return
    async with anyio.create_task_group() as tg:
        tg.start_soon(sync, "lint", pipeline.lint(py))
        tg.start_soon(sync, "test", test())
        tg.start_soon(build, opts, False)
    if not opts.no_deploy:
        await deploy(opts)


async def main(argv: Sequence[str] | None = None) -> int:
    """Connect to the Dagger session (``dagger run``) and run the command; return an exit code."""
    opts = parse_args(argv)
    config = dagger.Config(log_output=sys.stderr)
    failed = False
    try:
        async with dagger.connection(config):
            await run(opts)
    except* dagger.ExecError as group:
        # Task groups wrap failures; report every failed command with its output.
        failed = True
        for exc in group.exceptions:
            assert isinstance(exc, dagger.ExecError)
            print(f"FAILED: {' '.join(exc.command)} (exit {exc.exit_code})", file=sys.stderr)
            print(exc.stdout, exc.stderr, sep="\n", file=sys.stderr)
    return 1 if failed else 0


def entry() -> None:
    """The ``ci`` console script: run ``main`` and exit with its code."""
    sys.exit(anyio.run(main))


if __name__ == "__main__":
    entry()
