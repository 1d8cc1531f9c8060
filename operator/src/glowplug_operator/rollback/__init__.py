"""The rollback engine: which startup flags the pod template runs, decided from observations.

Pure: pods and the state kept in the ModelServer's status in, a `Decision` out (docs/rollback.md).
This package's interface is what is imported here; its modules are its own business.
"""

from glowplug_operator.rollback.blockers import refusal_reported_at
from glowplug_operator.rollback.claims import ClaimObservation, observe_claim
from glowplug_operator.rollback.decide import (
    CHURN_BUDGET_CHANGES,
    CHURN_WINDOW,
    INTERMITTENT_FAILURES,
    INTERMITTENT_WINDOW,
    Decision,
    decide,
    flag_states_from_status,
)
from glowplug_operator.rollback.observations import (
    DeploymentProgress,
    PodObservation,
    observe_deployment_progress,
    observe_pod,
    startup_deadline,
)
from glowplug_operator.rollback.outputs import Condition, Degraded, Event, Policy, Rollback
from glowplug_operator.rollback.reports import parse_report
from glowplug_operator.rollback.signatures import FlagDefinition, attribute
from glowplug_operator.rollback.state import STATES, FlagState, Rollout

__all__ = [
    "CHURN_BUDGET_CHANGES",
    "CHURN_WINDOW",
    "INTERMITTENT_FAILURES",
    "INTERMITTENT_WINDOW",
    "STATES",
    "ClaimObservation",
    "Condition",
    "Decision",
    "Degraded",
    "DeploymentProgress",
    "Event",
    "FlagDefinition",
    "FlagState",
    "PodObservation",
    "Policy",
    "Rollback",
    "Rollout",
    "attribute",
    "decide",
    "flag_states_from_status",
    "observe_claim",
    "observe_deployment_progress",
    "observe_pod",
    "parse_report",
    "refusal_reported_at",
    "startup_deadline",
]
