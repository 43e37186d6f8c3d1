"""Stage what `docker compose up --build` builds from, so that no build needs a network.

    .venv/bin/python deploy/prepare.py --variant gpu \
        --controller-torch-index https://download.pytorch.org/whl/cpu   # a GPU host
    .venv/bin/python deploy/prepare.py --variant cpu --base auto  # no GPU or registry (CI)

writes under build/deploy/:
  sandbox-cpu/  the exact build context `bilevel image build` uses (sandbox_image/)
  sandbox-gpu/  the same files with Dockerfile.gpu and a wheelhouse for the CUDA base's
                Python (torch itself is installed from the PyTorch index at build time)
  controller/   deploy/controller.Dockerfile, a wheelhouse of the controller's
                dependencies and its source packages
  secrets/      a bearer token and a self-signed TLS certificate, made once and kept;
                replace them with your own (same file names)
  compose.env   what compose needs from this host: the Docker socket's group, the
                secrets folder, the compose files of the variant, the base image

Needs the project's virtualenv (`pip install -e .`), pip's access to PyPI, openssl, and
for --base local, root and debootstrap. Safe to rerun: unchanged inputs give the same
contexts, so the engine's build cache makes a rebuild take seconds.
"""

from __future__ import annotations

import argparse
import grp
import hashlib
import os
import secrets
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from controller.sandbox import image  # noqa: E402

OUT = ROOT / "build" / "deploy"
CONTROLLER_PACKAGES = ("controller", "trainer", "sandbox_image", "mechanisms")
# Torch runs only inside sandboxes; the controller's imports of trainer/ are torch-free
# (tests/test_deploy_compose.py runs a controller image built without it).
CONTROLLER_SKIP: tuple[str, ...] = ("torch",)
GPU_PYTHON = "3.12"  # the Python of Dockerfile.gpu's default base (Ubuntu 24.04)
CONTROLLER_PYTHON = "3.11"
SOCKET = Path("/var/run/docker.sock")


def run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"error: {' '.join(cmd[:4])} ... failed:\n{done.stderr[-3000:]}")


def wheelhouse(requirements: list[str], python: str,
               torch_index: str | None = None) -> Path:
    """Wheels for `requirements` on this platform and CPython `python`, downloaded once.
    With `torch_index`, torch (and what it needs) comes from that index instead."""
    key = hashlib.sha256("\n".join([python, torch_index or "", *requirements]).encode())
    folder = image.CACHE_DIR / f"deploy-wheelhouse-{key.hexdigest()[:16]}"
    if not (folder / "requirements.txt").exists():
        partial = folder.with_suffix(".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        pip = [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(partial),
               "--only-binary=:all:", "--python-version", python]
        torch = [r for r in requirements if r.startswith("torch")] if torch_index else []
        if torch:
            run([*pip, "--index-url", str(torch_index), *torch])
        run([*pip, *(r for r in requirements if r not in torch)])
        (partial / "requirements.txt").write_text("\n".join(requirements) + "\n")
        partial.rename(folder)
    return folder


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _link_tree(source: Path, target: Path) -> None:
    """Copy a wheelhouse by hard links where the filesystem allows (no 200 MB copies)."""
    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
    shutil.copytree(source, target, copy_function=link)


def stage_sandbox_cpu(out: Path) -> Path:
    """sandbox_image/'s context, byte for byte what `bilevel image build` sends."""
    recipe = image.ImageRecipe()
    context = image.build_context(recipe, image.wheelhouse_for(recipe))
    target = _fresh(out / "sandbox-cpu")
    with tarfile.open(fileobj=context) as tar:
        tar.extractall(target, filter="data")
    return target


def stage_sandbox_gpu(out: Path, python: str = GPU_PYTHON) -> Path:
    target = _fresh(out / "sandbox-gpu")
    shutil.copy2(ROOT / "Dockerfile.gpu", target / "Dockerfile")
    for name, path in image.source_files():
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target / name)
    others = [r for r in image.DEFAULT_REQUIREMENTS if not r.startswith("torch")]
    _link_tree(wheelhouse(others, python), target / "wheelhouse")
    return target


def controller_requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps: list[str] = project["dependencies"]
    return [d for d in deps if d.split("=")[0].strip() not in CONTROLLER_SKIP]


def stage_controller(out: Path, torch_index: str | None = None) -> Path:
    target = _fresh(out / "controller")
    shutil.copy2(ROOT / "deploy" / "controller.Dockerfile", target / "Dockerfile")
    _link_tree(wheelhouse(controller_requirements(), CONTROLLER_PYTHON, torch_index),
               target / "wheelhouse")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in CONTROLLER_PACKAGES:
        shutil.copytree(ROOT / package, target / "src" / package, ignore=ignore)
    return target


def make_secrets(folder: Path, group: int | None) -> None:
    """A token and a self-signed certificate (for localhost and the service name), kept
    once made. Mode 0640, group of the Docker socket: the controller reads them through
    that group, which is root-equivalent on this host anyway."""
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o750)
    token, cert, key = folder / "token", folder / "tls.crt", folder / "tls.key"
    if not token.exists():
        token.write_text(secrets.token_hex(32) + "\n")
    if not (cert.exists() and key.exists()):
        run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-days", "825", "-subj",
             "/CN=bilevel-controller", "-addext",
             "subjectAltName=DNS:localhost,DNS:controller,IP:127.0.0.1",
             "-keyout", str(key), "-out", str(cert)])
    for path in (folder, token, cert, key):
        if group is not None:
            try:
                os.chown(path, -1, group)
            except PermissionError:
                sys.exit(f"error: cannot give {path} to group {group} (the Docker socket's)"
                         f": run as root, or `chgrp {group} {path}` yourself")
        os.chmod(path, 0o750 if path.is_dir() else 0o640)


def socket_group() -> int:
    host = os.environ.get("DOCKER_HOST", "")
    path = Path(host.removeprefix("unix://")) if host.startswith("unix://") else SOCKET
    try:
        return path.stat().st_gid
    except OSError:
        sys.exit(f"error: no Docker socket at {path}: start the engine (see README#docker)")


def resolve_base(base: str | None) -> str | None:
    """'local'/'auto' as `bilevel image build --base` reads them; None: compose's default."""
    if base not in ("local", "auto"):
        return base
    import docker

    return image.resolve_base(docker.from_env(), base)


def write_env(out: Path, variant: str, gid: int, secrets_dir: Path, base: str | None) -> Path:
    files = ["docker-compose.yml"] + (["docker-compose.cpu.yml"] if variant == "cpu" else [])
    lines = ["COMPOSE_PROJECT_NAME=bilevel",
             f"COMPOSE_FILE={':'.join(str(ROOT / f) for f in files)}",
             f"DOCKER_GID={gid}", f"BILEVEL_SECRETS={secrets_dir}", f"BILEVEL_BUILD={out}"]
    if base:
        lines.append(f"BILEVEL_BASE={base}")
    try:
        gname = grp.getgrgid(gid).gr_name
    except KeyError:
        gname = str(gid)
    env = out / "compose.env"
    env.write_text(f"# Written by deploy/prepare.py --variant {variant}; socket group "
                   f"{gname}.\n" + "\n".join(lines) + "\n")
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", choices=("gpu", "cpu"), default="gpu")
    parser.add_argument("--base", help="base image of the CPU sandbox and the controller: "
                                       "an image reference, 'local' (debootstrap, no "
                                       "registry) or 'auto' (python:3.11-slim-bookworm if "
                                       "the engine has it, else local); default: the "
                                       "public python:3.11-slim-bookworm")
    parser.add_argument("--gpu-python", default=GPU_PYTHON,
                        help="Python version of the CUDA base (for its wheelhouse)")
    parser.add_argument("--controller-torch-index", metavar="URL",
                        help="index of the controller's torch (it only needs the CPU "
                             "build; on PyPI, Linux torch is the multi-GB CUDA one): e.g. "
                             "https://download.pytorch.org/whl/cpu")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    gid = socket_group()
    base = resolve_base(args.base)
    staged = [stage_controller(out, args.controller_torch_index)]
    staged.append(stage_sandbox_cpu(out) if args.variant == "cpu"
                  else stage_sandbox_gpu(out, args.gpu_python))
    make_secrets(out / "secrets", gid)
    env = write_env(out, args.variant, gid, out / "secrets", base)
    for path in staged:
        print(f"staged {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    print(f"compose settings in {env}; next: docker compose --env-file {env} up -d --build")
    return 0


if __name__ == "__main__":
    sys.exit(main())
