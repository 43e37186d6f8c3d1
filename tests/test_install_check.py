"""The comparison of a task image's install with its base
(controller/sandbox/install_check.py) on the real engine, on changes pip never makes: a
container of the sandbox image changes it by hand, and the engine's diff of it must name
every change the rules forbid."""

from __future__ import annotations

import docker
import pytest

from controller.sandbox.install_check import install_problems
from controller.sandbox.task_image import base_layout


@pytest.mark.docker
def test_deny_image_comparison_reports_deletions_changes_links_and_modes(
        docker_client: docker.DockerClient, sandbox_image: str) -> None:
    """The comparison on what pip never writes: a deleted file, an emptied (opaque)
    folder, a changed file and folder mode, a link and a setuid file in new site-packages
    entries, a folder outside the allowed places."""
    layout = base_layout(docker_client, sandbox_image)
    site = layout.site_packages[0]
    script = (f"rm /opt/venv/bin/isympy && rm -rf /opt/venv/share && mkdir /opt/venv/share"
              f" && chmod 777 /opt/venv/include && echo x > /opt/venv/bin/f2py"
              f" && ln -s /etc {site}/bilevellink && mkdir {site}/bilevelsuid"
              f" && touch {site}/bilevelsuid/x && chmod 4755 {site}/bilevelsuid/x"
              f" && mkdir /etc/bilevel")
    container = docker_client.containers.create(sandbox_image, ["/bin/sh", "-c", script],
                                                user="0:0", network_disabled=True)
    try:
        container.start()
        assert container.wait(timeout=60)["StatusCode"] == 0, container.logs()
        problems = "\n".join(install_problems(docker_client, container, sandbox_image,
                                              layout))
    finally:
        container.remove(force=True)
    for words in ("/opt/venv/bin/isympy is deleted", "/opt/venv/share/man is deleted",
                  "/opt/venv/include is changed (the sandbox image's folder 755 is now "
                  "folder 777)", "/opt/venv/bin/f2py is changed (the sandbox image's file",
                  f"{site}/bilevellink is not a plain file or folder",
                  f"{site}/bilevelsuid/x has owner 0:0 and mode 4755",
                  "/etc/bilevel is outside site-packages"):
        assert words in problems, problems
