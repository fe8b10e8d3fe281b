"""The run layer: the results store with its claims, the runner that schedules cells, nested tuning."""
