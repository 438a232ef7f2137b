"""The checks that turn every bad input into one line before any work starts.

- `validation`: overrides, the composed config, data paths, the search's settings, and a run's parts
  assembled on the meta device.

May import training's assembly (never the loop, `make lint` checks this) and everything below it.
"""
