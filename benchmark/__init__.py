"""mesbench harness: config, data, protocol, training loop, metrics, store, runner, CLI."""

__version__ = "0.1.0"
