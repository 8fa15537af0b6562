"""The Dockerfile's pinned versions agree with requirements.txt, and it only uses files that exist."""
import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def requirement_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"requirements.txt: {line!r} is not pinned with =="
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, args = line.partition(" ")
            out.append((keyword.upper(), args.strip()))
    return out


def base_images() -> list[str]:
    return [args.split()[0] for keyword, args in dockerfile_instructions() if keyword == "FROM"]


def major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def test_base_image_tensorflow_equals_the_requirements_pin():
    pins = requirement_pins()
    (image,) = base_images()
    repository, _, tag = image.partition(":")
    assert repository == "tensorflow/tensorflow", image
    match = re.fullmatch(r"(\d+\.\d+\.\d+)-gpu", tag)
    assert match, f"base image {image} is not pinned to an exact TensorFlow GPU release"
    assert match.group(1) == pins["tensorflow"]


@pytest.mark.parametrize("package", ["tf-keras", "tensorboard"])
def test_tensorflow_companions_match_its_release(package):
    # tf-keras and tensorboard are released in lock step with TensorFlow (same major.minor).
    pins = requirement_pins()
    assert major_minor(pins[package]) == major_minor(pins["tensorflow"])


def test_installs_the_pinned_requirements():
    runs = [args for keyword, args in dockerfile_instructions() if keyword == "RUN"]
    copies = [args for keyword, args in dockerfile_instructions() if keyword == "COPY"]
    assert any(re.search(r"pip install .*-r requirements\.txt", run) for run in runs)
    assert any(args.split()[0] == "requirements.txt" for args in copies)
    assert any(keyword == "WORKDIR" for keyword, _ in dockerfile_instructions())


def test_scripts_the_dockerfile_runs_exist():
    runs = " ".join(args for keyword, args in dockerfile_instructions() if keyword == "RUN")
    scripts = re.findall(r"\bscripts/[\w./-]+", runs)
    assert scripts, "expected the optional Horovod build step (scripts/install_horovod.sh)"
    for script in scripts:
        assert (REPO / script).is_file(), f"Dockerfile runs {script}, which is not in the repository"


def test_dockerignore_keeps_local_environment_and_data_out():
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".venv", ".git", "data", "results"} <= ignored
