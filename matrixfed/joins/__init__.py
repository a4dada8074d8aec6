"""Joining and leaving rooms hosted on other servers (see ``coordinator``)."""

from matrixfed.joins.api import (
    AttemptFailure,
    JoinFailed,
    JoinProgress,
    JoinResult,
    LeaveResult,
)
from matrixfed.joins.coordinator import JoinCoordinator
from matrixfed.joins.fedclient import FederationJoinClient
from matrixfed.joins.threads import PoolRunner

__all__ = [
    "AttemptFailure",
    "FederationJoinClient",
    "JoinCoordinator",
    "JoinFailed",
    "JoinProgress",
    "JoinResult",
    "LeaveResult",
    "PoolRunner",
]
