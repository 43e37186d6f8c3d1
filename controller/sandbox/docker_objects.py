"""The objects runs claim on a Docker engine - shared data volumes with their holders,
and this controller's task image tags - and their removal (RunObjects, backend.py).

The rules live beside the objects (volumes.py, task_image_tags.py); this class binds
them to one engine and namespace, and turns every engine failure into
SandboxUnavailable, so no Docker error crosses the backend's seam. It needs no sandbox
image: `bilevel delete` on a state dir no controller holds uses it alone.
"""

from __future__ import annotations

from controller.sandbox import task_image_tags, volumes
from controller.sandbox.backend import ClaimIndex, Sweep
from controller.sandbox.docker_engine import DockerEngine, engine_calls


class DockerObjects:
    def __init__(self, engine: DockerEngine, namespace: str) -> None:
        self.engine = engine
        self.namespace = namespace

    def release_holds(self, index: ClaimIndex, sweep: Sweep) -> None:
        with engine_calls():
            volumes.release_holds(self.engine.client, self.namespace, index.store,
                                  index.run_live, sweep, index.store_gone)

    def remove_data(self, name: str, index: ClaimIndex, sweep: Sweep) -> None:
        with engine_calls():
            volumes.remove_data_volume(self.engine.client, name, index.data_claimed, sweep)

    def remove_task_image(self, tag: str, index: ClaimIndex, sweep: Sweep) -> None:
        with engine_calls():
            task_image_tags.release_task_image(self.engine.client, tag, index.image_claimed,
                                               sweep)

    def sweep(self, index: ClaimIndex) -> Sweep:
        with engine_calls():
            data = volumes.sweep_data_volumes(self.engine.client, self.namespace,
                                              index.store, index.run_live,
                                              index.data_claimed, index.store_gone)
            images = task_image_tags.sweep_task_images(self.engine.client, self.namespace,
                                                       index.store, index.image_claimed)
        return Sweep(data.removed + images.removed, {**data.kept, **images.kept})

    def close(self) -> None:
        self.engine.close()
