"""The join coordinator's public names (the code lives in ``matrixfed.joins``)."""

from matrixfed.joins import (
    AttemptFailure,
    FederationJoinClient,
    JoinCoordinator,
    JoinFailed,
    JoinProgress,
    JoinResult,
    LeaveResult,
    PoolRunner,
)

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
