"""Pipeline steps: each returns a lazy Dagger Container, Directory or Service; none awaits."""

from __future__ import annotations

from typing import Annotated, Final

from dagger import BuildArg, Container, Directory, Doc, Service, dag

SERVICES: Final = ("broker", "streamer", "collector", "api")
"""The four service images, all built from the one ``Dockerfile`` (build argument ``SERVICE``)."""

PYTHON_IMAGE: Final = "python:3.13-slim"
POSTGRES_IMAGE: Final = "postgres:18"
UV_VERSION: Final = "0.13.9"
"""uv for the CI containers; keep in step with the Dockerfile's ``UV_VERSION``."""

WORKDIR: Final = "/src"
VENV: Final = "/opt/venv"

# Host paths never sent to the engine: local environments, caches, build output.
SOURCE_EXCLUDE: Final = [
    ".git",
    ".venv",
    "**/.venv",
    "**/__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
    ".coverage",
    ".coverage.*",
    "htmlcov",
    ".task",
    ".data",
    ".tools",
    ".dagger",
]

# What `uv sync` needs to resolve the workspace: syncing these first keeps the dependency layer
# cached while only source code changes.
MANIFESTS: Final = [
    "pyproject.toml",
    "uv.lock",
    ".python-version",
    "packages/*/pyproject.toml",
    "services/*/pyproject.toml",
    "ci/pyproject.toml",
]

# Test database: throwaway credentials for a throwaway service container.
DB_USER: Final = "telemetry"
DB_NAME: Final = "telemetry"
DB_ALIAS: Final = "db"


def source(
    root: Annotated[
        str, Doc("Repository root on the host, relative to the Dagger session's workdir.")
    ] = ".",
) -> Directory:
    """The repository as the engine sees it, without local environments and caches."""
    return dag.host().directory(root, exclude=SOURCE_EXCLUDE)


def base(
    src: Annotated[Directory, Doc("The repository (from source()).")],
) -> Container:
    """Python 3.13 with uv and the whole workspace synced (locked, all members, dev group).

    Built once and shared by lint and test. The uv cache is a Dagger cache volume and
    ``UV_LINK_MODE=copy`` because the cache and the venv sit on different mounts.
    """
    manifests = src.filter(include=MANIFESTS)
    return (
        dag.container()
        .from_(PYTHON_IMAGE)
        .with_exec(["pip", "install", "--disable-pip-version-check", f"uv=={UV_VERSION}"])
        .with_mounted_cache("/root/.cache/uv", dag.cache_volume("telemetry-uv"))
        .with_env_variable("UV_LINK_MODE", "copy")
        .with_env_variable("UV_PYTHON_DOWNLOADS", "never")
        .with_env_variable("UV_PROJECT_ENVIRONMENT", VENV)
        .with_env_variable("PYTHONUNBUFFERED", "1")
        .with_env_variable("CI", "true")
        .with_workdir(WORKDIR)
        .with_directory(WORKDIR, manifests)
        .with_exec(["uv", "sync", "--locked", "--all-packages", "--no-install-workspace"])
        .with_directory(WORKDIR, src)
        .with_exec(["uv", "sync", "--locked", "--all-packages"])
    )


def lint(
    py: Annotated[Container, Doc("The base container (from base()).")],
) -> Container:
    """Ruff lint + format check and mypy --strict: the Taskfile's `lint` and `typecheck` tasks."""
    return py.with_exec(["uv", "run", "task", "lint"]).with_exec(["uv", "run", "task", "typecheck"])


def postgres(
    password: Annotated[
        str, Doc("Superuser password of the throwaway test database.")
    ] = "telemetry",
) -> Service:
    """A PostgreSQL 18 service container for the test suite (bound as ``db``)."""
    return (
        dag.container()
        .from_(POSTGRES_IMAGE)
        .with_env_variable("POSTGRES_USER", DB_USER)
        .with_env_variable("POSTGRES_DB", DB_NAME)
        .with_secret_variable("POSTGRES_PASSWORD", dag.set_secret("postgres-password", password))
        .with_exposed_port(5432)
        .as_service(use_entrypoint=True)
    )


def test(
    py: Annotated[Container, Doc("The base container (from base()).")],
    db: Annotated[Service, Doc("PostgreSQL to test against (from postgres()).")],
    password: Annotated[str, Doc("Password of that database's superuser.")] = "telemetry",
    pytest_args: Annotated[
        tuple[str, ...], Doc("Extra pytest arguments, passed through `task test -- ...`.")
    ] = (),
) -> Container:
    """The Taskfile's `test` task (coverage gate included) against ``db``.

    TEST_DATABASE_URL is an admin DSN: the session fixture creates and drops its own databases.
    """
    dsn = dag.set_secret(
        "test-database-url", f"postgresql://{DB_USER}:{password}@{DB_ALIAS}:5432/{DB_NAME}"
    )
    return (
        py.with_service_binding(DB_ALIAS, db)
        .with_secret_variable("TEST_DATABASE_URL", dsn)
        .with_exec(["uv", "run", "task", "test", "--", *pytest_args])
    )


def image(
    src: Annotated[Directory, Doc("The repository (from source()); the Docker build context.")],
    service: Annotated[str, Doc("One of SERVICES: the Dockerfile's SERVICE build argument.")],
) -> Container:
    """A service image, built like `docker build --build-arg SERVICE=<service> .`."""
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}; expected one of {', '.join(SERVICES)}")
    return src.docker_build(
        dockerfile="Dockerfile", build_args=[BuildArg(name="SERVICE", value=service)]
    )


def images(
    src: Annotated[Directory, Doc("The repository (from source()).")],
) -> dict[str, Container]:
    """All four service images, by service name."""
    return {service: image(src, service) for service in SERVICES}
