"""Attach the outer levels a run's settings name to its inner loop: the mechanism
wiring (when Level 2 runs or the run starts with mechanisms), Level 1.5 and Level 2."""

from __future__ import annotations

from collections.abc import Callable

from controller.llm.types import Provider
from controller.research.level2 import MechanismLoop
from controller.research.level2_design import LLMDesigner
from controller.research.level15 import ConfigLoop, LLMController, RuleController
from controller.research.loop import InnerLoop
from controller.research.mechanism_wiring import MechanismWiring, MechanizedProposer
from controller.sandbox.executor import SandboxExecutor
from mechanisms.gates import GateSettings
from mechanisms.runtime import MechanismSettings


def attach_outer_levels(loop: InnerLoop, executor: SandboxExecutor | None,
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
            controller = LLMController(provider(), loop.run_id, llm.max_tokens)
        ConfigLoop(loop, controller).attach()
    if "2" in outer.levels:
        assert wiring is not None
        designer = None
        if outer.mechanism_source == "llm":
            designer = LLMDesigner(provider(), loop.run_id, outer, llm.max_tokens)
        MechanismLoop(loop, wiring, designer).attach()
