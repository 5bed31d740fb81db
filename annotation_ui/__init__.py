"""The labelers' web app: `pallm review serve` runs it (see README.md in this folder)."""
