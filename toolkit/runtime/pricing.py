"""Cost in the units people pay: core-seconds (and GPU-seconds) of reserved capacity, priced.

Why reserved and not used: a cloud bills a core whether its instance computes or waits, so an
instance holds `threads` cores (and a GPU instance one GPU) for every second it is loaded. The
runtime's account already integrates those seconds per component (toolkit/runtime/supervisor.py);
this prices them and spreads them over the requests served.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from toolkit.core.errors import CompoundError


@dataclass(frozen=True)
class Prices:
    core_hour: float = 0.0  # currency units per core-hour; 0: not priced
    gpu_hour: float = 0.0  # per GPU-hour

    def __post_init__(self) -> None:
        for flag, value in (("--price-per-core-hour", self.core_hour), ("--price-per-gpu-hour", self.gpu_hour)):
            if value < 0:
                raise CompoundError(f"{flag} {value:g} is negative", hint="give a price per hour, 0 or more")

    @property
    def given(self) -> bool:
        return self.core_hour > 0 or self.gpu_hour > 0

    def cost(self, core_s: float, gpu_s: float = 0.0) -> float:
        return (core_s * self.core_hour + gpu_s * self.gpu_hour) / 3600.0

    def per_1k_requests(self, core_s: float, gpu_s: float, requests: int) -> Optional[float]:
        return 1e3 * self.cost(core_s, gpu_s) / requests if requests and self.given else None

    def as_dict(self) -> dict[str, float]:
        return {"core_hour": self.core_hour, "gpu_hour": self.gpu_hour}

    @classmethod
    def of(cls, recorded: Optional[dict[str, Any]]) -> Prices:
        recorded = recorded or {}
        return cls(float(recorded.get("core_hour", 0.0)), float(recorded.get("gpu_hour", 0.0)))


def cost_summary(total: dict[str, Any], prices: Prices) -> dict[str, Any]:
    """From the runtime's totals (instance_s, core_s, gpu_s, requests): what `compound status` shows."""
    core_s, gpu_s, requests = float(total.get("core_s", 0)), float(total.get("gpu_s", 0)), int(total.get("requests", 0))
    summary: dict[str, Any] = {
        "core_s": round(core_s, 1),
        "gpu_s": round(gpu_s, 1),
        "core_s_per_1k_requests": round(1e3 * core_s / requests, 3) if requests else None,
    }
    if prices.given:
        per_1k = prices.per_1k_requests(core_s, gpu_s, requests)
        summary.update(
            prices=prices.as_dict(),
            cost=round(prices.cost(core_s, gpu_s), 6),
            per_1k_requests=round(per_1k, 6) if per_1k is not None else None,
        )
    return summary
