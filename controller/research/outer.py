"""Attach the outer levels a run's settings name to its inner loop: the mechanism
wiring (when Level 2 runs or the run starts with mechanisms), Level 1.5 and Level 2."""

from __future__ import annotations

from collections.abc import Callable

from controller.llm.types import Provider
from controller.research.level1.loop import InnerLoop
from controller.research.level2.design import LLMDesigner
from controller.research.level2.gates import GateSettings
from controller.research.level2.loop import MechanismLoop
from controller.research.level2.runtime import MechanismSettings
from controller.research.level2.wiring import MechanismWiring, MechanizedProposer
from controller.research.level15.loop import ConfigLoop, LLMController, RuleController
from controller.research.task import loss_note, objective_of
from controller.sandbox.backend import SandboxBackend


def attach_outer_levels(loop: InnerLoop, executor: SandboxBackend | None,
                        provider: Callable[[], Provider],
                        mechanism_settings: MechanismSettings | None = None,
                        gate_settings: GateSettings | None = None) -> None:
    """`provider` is called only when a level asks the LLM (it may raise
    LLMConfigError when no key is configured)."""
    outer, llm = loop.settings.outer, loop.settings.llm
    wiring: MechanismWiring | None = None
    if "2" in outer.levels or outer.mechanisms:
        if executor is None:
            raise ValueError("mechanisms run in sandboxes: pass the run's executor")
        wiring = MechanismWiring(loop.run_id, loop.settings, loop.task, loop.store,
                                 loop.artifacts, executor, loop.space, mechanism_settings,
                                 gate_settings)
        loop.mechanisms = wiring
        wiring.reads_context = bool(getattr(loop.planner.proposer, "reads_context", True))
        loop.planner.proposer = MechanizedProposer(loop.planner.proposer, wiring)
        loop.context_hooks.append(wiring.context_hook)
        loop.start_hooks.append(wiring.start)
        loop.exit_hooks.append(wiring.close)
    if "1.5" in outer.levels:
        controller: RuleController | LLMController = RuleController()
        if outer.config_controller == "llm":
            controller = LLMController(provider(), loop.run_id, llm.max_tokens,
                                       objective=objective_of(loop.task))
        ConfigLoop(loop, controller).attach()
    if "2" in outer.levels:
        assert wiring is not None
        designer = None
        if outer.mechanism_source == "llm":
            designer = LLMDesigner(provider(), loop.run_id, outer, llm.max_tokens,
                                   task_text=f"{loop.task.description}\n"
                                             f"{loss_note(objective_of(loop.task))}")
        MechanismLoop(loop, wiring, designer).attach()
