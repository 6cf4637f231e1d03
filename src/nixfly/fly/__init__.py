"""Fly.io: fly.toml → MachineConfig, the Machines API client, deploy strategies, secrets."""
