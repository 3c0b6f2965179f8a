"""Engine pieces of the replay: fills, fees and payoffs, point-in-time spot features, portfolio metrics.

`harness.simulator.CoveredCallSimulator` composes these; they know nothing of experiments,
policies or reports.
"""

from harness.engine.features import spot_features
from harness.engine.metrics import max_drawdown_pct, portfolio_metrics
from harness.engine.outcomes import (
    call_payoff,
    covered_drawdown_pct,
    delivery_fee,
    purchase_price,
    sale_price,
    trading_fee,
)

__all__ = [
    "call_payoff",
    "covered_drawdown_pct",
    "delivery_fee",
    "max_drawdown_pct",
    "portfolio_metrics",
    "purchase_price",
    "sale_price",
    "spot_features",
    "trading_fee",
]
