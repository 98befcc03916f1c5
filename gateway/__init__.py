"""An inference gateway: contracts, canary rollouts, fallback, tail latency and cost in front of model servers."""

__version__ = "0.1.0"
