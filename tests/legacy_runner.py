"""The sandbox runner in the old layout, for the sensitivity twins only
(tests/test_sandbox_sensitivity.py): it never ships in the product image.

`legacy_runner_image` builds a test image from the sandbox image in which this file
is /opt/bilevel/runner.py and the product runner is beside it as runner_secure.py. This
wrapper runs the product runner with the old layout patched in: the runner drops to the
job's uid itself before it starts the job (so the job can signal and stop it), its
directory - job.json and the result - is the job's to write, and only the job's process
group is killed when the job's main process ends (a daemon that left the group lives on).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import os
import signal
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the container runs this file with the standard library only
    import docker

SECURE = "/opt/bilevel/runner_secure.py"


def _load_runner() -> Any:
    spec = importlib.util.spec_from_file_location("runner_secure", SECURE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _legacy(runner: Any) -> None:
    """Patch the old layout into the product runner's module."""
    prepare, become_job_user, reap = runner._prepare, runner._become_job_user, runner._reap
    child: list[int] = []

    def legacy_prepare() -> str:
        failed = str(prepare())
        os.chmod(runner.RUNNER_DIR, 0o755)
        for dirpath, _dirs, files in os.walk(runner.RUNNER_DIR):
            for name in [dirpath, *(os.path.join(dirpath, f) for f in files)]:
                os.chown(name, runner.JOB_UID, runner.JOB_GID)
        if not failed:
            become_job_user()  # the runner itself runs as the job's uid from here on
        return failed

    def remember_reap(pid: int) -> int | None:
        if not child:
            child.append(pid)
        result: int | None = reap(pid)
        return result

    def kill_group_only() -> None:
        """What escaped the job's process group survives."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(-child[0], signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass

    @contextlib.contextmanager
    def same_user() -> Iterator[None]:
        yield  # already the job's uid

    runner._prepare = legacy_prepare
    runner._become_job_user = lambda: None  # the child inherits the runner's uid
    runner._keep_only_runner_caps = lambda: None  # nothing left to keep
    runner._reap = remember_reap
    runner._kill_everything = kill_group_only
    runner._as_job_user = same_user


def legacy_runner_image(client: docker.DockerClient, image: str) -> str:
    """The sandbox image `image` with this file as its runner (built once per image and
    version of this file)."""
    import docker.errors

    source = Path(__file__).read_bytes()
    digest = hashlib.sha256(image.encode() + source).hexdigest()[:16]
    tag = f"bilevel-test-runner-legacy:{digest}"
    try:
        client.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    dockerfile = (f"FROM {image}\nUSER root\n"
                  "RUN chmod u+w /opt/bilevel && mv /opt/bilevel/runner.py "
                  f"{SECURE}\n"
                  "COPY legacy_runner.py /opt/bilevel/runner.py\n"
                  "RUN chmod -R a-w /opt/bilevel\nUSER 0:0\n").encode()
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, data in (("Dockerfile", dockerfile), ("legacy_runner.py", source)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    client.images.build(fileobj=context, custom_context=True, tag=tag, rm=True,
                        network_mode="none")
    return tag


if __name__ == "__main__":
    product = _load_runner()
    _legacy(product)
    sys.exit(product.main())
