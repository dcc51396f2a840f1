"""The pipeline graph and everything decided before rendering: order, fan-out/join, ensemble vs
orchestrator vs fused (graph), the compiled program an orchestrator runs (program), and instance
planning from measured cost curves (allocate). Pure: nothing here talks to a server or writes files.
"""

from __future__ import annotations

from toolkit.plan.graph import (
    AnyStep,
    DeploymentPlan,
    Device,
    EnsembleStep,
    HandlerRef,
    InstanceGroup,
    ModelPlan,
    PipelinePlan,
    build_plan,
    import_handler_module,
    plan_spec,
)

__all__ = [
    "AnyStep",
    "DeploymentPlan",
    "Device",
    "EnsembleStep",
    "HandlerRef",
    "InstanceGroup",
    "ModelPlan",
    "PipelinePlan",
    "build_plan",
    "import_handler_module",
    "plan_spec",
]
